"""The ``fastif`` command line: ``main`` (the parser and the single-example commands), ``options``
(shared argparse types), ``jobs`` (``fastif worker`` / ``fastif jobs``), ``many`` (many examples and
``fastif matrix``)."""
