"""Application job kinds (influence graphs, error correction and augmentation, simulatability), one
package each: its settings (``config``: the parameter dataclasses that :data:`fastif_core.jobs.KINDS`
lists), pure computation, a worker handler (``job``: listed in :data:`fastif_core.worker.registry.HANDLERS`),
a ``fastif`` subcommand (``cli``) and a dashboard page under ``app/views/``.

This package imports nothing, so the CLI can import an application's ``config`` and ``cli`` without the
engine."""
