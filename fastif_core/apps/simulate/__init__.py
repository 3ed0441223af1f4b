"""Simulatability (paper Sec. 6.1, Fig. 5 / 9): do the task model's influential training examples help a
simulator predict what the task model does?

- :mod:`fastif_core.apps.simulate.config` ``SimulateConfig`` / ``SimulateParams`` (CLI, job, dashboard),
  :mod:`.steps` the measurement (one gradient per explanation example, every learning rate from it; the
  naive step-and-restore loop next to it), :mod:`.simulator` the simulator (a ``simulator`` model
  version, trained once per task model), :mod:`.explanations` test examples and explanation sets,
  :mod:`.summary` curves and the summary, :mod:`.run` the study end to end, :mod:`.job` the ``simulate``
  worker handler, :mod:`fastif_core.apps.simulate.cli` ``fastif simulate``, :mod:`.speed` the shortcut's
  speed-up over the naive loop.

Importing :mod:`.job` registers the worker handler (``fastif_core.apps`` does); this package itself
imports nothing.
"""
