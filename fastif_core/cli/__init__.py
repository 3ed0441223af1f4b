"""The ``fastif`` command line: :func:`main` (the console script ``fastif_core.cli:main`` and
``python -m fastif_core``). ``commands`` (the parser and the single-example commands), ``options``
(shared argparse types), ``jobs`` (``fastif worker`` / ``fastif jobs``), ``many`` (many examples and
``fastif matrix``); the applications add theirs from ``fastif_core.apps.<name>.cli``."""

from fastif_core.cli.commands import main

__all__ = ["main"]
