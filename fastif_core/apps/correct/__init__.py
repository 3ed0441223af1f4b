"""Error correction and data augmentation by influence, with model versions (paper Sec. 6.3, Fig. 7).

:mod:`.config` the settings (``correct`` and ``activate_model`` job kinds), :mod:`.data` the target
slice's anchor / evaluation split and the evaluation sets, :mod:`.pool` the candidate pool (the
training set or a new dataset with its own features and kNN index), :mod:`.loop` one method's
correction loop, :mod:`.summary` the summary over seeds and the merging of runs that hold different
seeds of one comparison, :mod:`.stored` the stored runs so merged, :mod:`.job` the worker
handlers, :mod:`.cli` ``fastif correct`` / ``fastif corrections`` / ``fastif versions``.
Model versions themselves are :mod:`fastif_core.workspace.versions`. This package itself imports nothing.
"""
