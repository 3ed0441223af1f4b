"""The background worker: ``loop`` (claim, run, settle jobs), ``handlers`` (the engine's job handlers),
``registry`` (job kind → handler, explicit) and ``process`` (is a worker alive, start one; torch-free)."""
