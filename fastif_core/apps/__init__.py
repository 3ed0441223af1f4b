"""Application job kinds (influence graphs, error correction, augmentation, simulatability) live here,
one module or small package each: its pure computation, a job handler that registers its kind
(:func:`fastif_core.jobs.register_kind`, :func:`fastif_core.worker.register_handler`), a ``fastif``
subcommand and a dashboard page. The worker imports this package at start (``worker.HANDLER_MODULES``)
so that importing an application module here registers its kind with every worker."""

from fastif_core.apps import correct_job  # noqa: E402,F401 - registers the correct and activate_model kinds
from fastif_core.apps.graph import job as graph_job  # noqa: F401 - the "graph" kind and its handler
from fastif_core.apps.simulate import job as _simulate_job  # noqa: F401 - registers the ``simulate`` job kind
