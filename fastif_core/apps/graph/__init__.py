"""Influence graphs (paper Sec. 6.2, Fig. 6, Tables 4-5): which training examples help or hurt which
slices of the evaluation data.

Pure computation: :mod:`.selection` (test set by slices), :mod:`.layout` (the circular bipartite layout,
vectorised Weiszfeld), :mod:`.stats` (slice statistics and correlations), :mod:`.export` (networkx,
GraphML / node-link JSON). Orchestration: :mod:`.influences` (the one function that asks the engine),
:mod:`.build` (the pipeline, stored once), :mod:`.job` (the ``graph`` job kind's worker handler).
Settings: :class:`fastif_core.apps.graph.config.GraphConfig`; CLI: :mod:`fastif_core.apps.graph.cli`; page:
``app/views/graphs.py``.
"""
