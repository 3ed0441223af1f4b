"""Every job kind the worker runs and its handler, in one table (kind → ``handler(ctx)``).

The kinds themselves (their parameter dataclasses) are :data:`fastif_core.jobs.KINDS`; this module pairs
each with the function that runs it. Imported normally by :mod:`fastif_core.worker.loop`: adding a kind
means adding its parameters to ``jobs.KINDS`` and its handler here.

Kinds from outside fastif_core (a deployment's own job, a test's): ``$FASTIF_WORKER_MODULES`` names
modules (comma-separated) that each define ``JOB_KINDS`` (a sequence of :class:`fastif_core.jobs.JobKind`)
and ``HANDLERS`` (kind -> handler); :func:`load_plugins` adds them to both tables when a worker starts.
That is the only import by name in fastif, and only of names the user gives.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any

from fastif_core import jobs
from fastif_core.apps.correct.job import run_activate_job, run_correct_job
from fastif_core.apps.graph.job import run_graph
from fastif_core.apps.simulate.job import run_simulate
from fastif_core.errors import ConfigError, JobError
from fastif_core.worker import handlers
from fastif_core.worker import sketch as sketch_handlers
from fastif_core.worker.context import JobContext

Handler = Callable[[JobContext], Any]  # returns None (job already done) or a result dict
PLUGINS_ENV = "FASTIF_WORKER_MODULES"

HANDLERS: dict[str, Handler] = {
    "influence": handlers.run_influence,
    "influence_many": handlers.run_influence_many,
    "matrix": handlers.run_matrix,
    "prepare": handlers.run_prepare,
    "graph": run_graph,
    "correct": run_correct_job,
    "activate_model": run_activate_job,
    "simulate": run_simulate,
    "sketch": sketch_handlers.run_sketch,
    "sketch_click": sketch_handlers.run_sketch_click,
}


def handler_for(kind: str) -> Handler:
    """The handler of ``kind``; JobError naming the kinds this worker runs otherwise."""
    if kind not in HANDLERS:
        raise JobError(f"no worker handler for job kind {kind!r}: this worker runs {sorted(HANDLERS)}")
    return HANDLERS[kind]


def load_plugins() -> None:
    """Add the job kinds and handlers of every module named in ``$FASTIF_WORKER_MODULES`` (see the module
    docstring); a name that cannot be imported, or a module without both tables, is a ConfigError."""
    for name in filter(None, (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"{PLUGINS_ENV}: cannot import {name!r}: {exc}") from exc
        kinds, handlers = getattr(module, "JOB_KINDS", None), getattr(module, "HANDLERS", None)
        if kinds is None or handlers is None:
            raise ConfigError(f"{PLUGINS_ENV}: {name!r} must define JOB_KINDS and HANDLERS")
        jobs.KINDS.update({kind.name: kind for kind in kinds})
        HANDLERS.update(handlers)
