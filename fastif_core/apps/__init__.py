"""Application job kinds (influence graphs, error correction and augmentation, simulatability), one
package each: its settings (``config``, registering its job kinds), pure computation, a worker handler
(``job``), a ``fastif`` subcommand (``cli``) and a dashboard page under ``app/views/``.

This package imports nothing, so the CLI can import an application's ``config`` and ``cli`` without the
engine; the worker imports every ``job`` module at start (:data:`fastif_core.worker.loop.HANDLER_MODULES`)."""
