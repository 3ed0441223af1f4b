"""argparse value types, options and the progress bar shared by every ``fastif`` subcommand module (a leaf:
it imports no command module, so the command modules import it without importing each other). A bad value
becomes argparse's one-line error naming the option and the allowed values, exit status 2."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastif_core.progress import Progress


def _number(kind: type, allowed: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)``, finite and > 0; otherwise the error names ``allowed``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: allowed {allowed}") from None
        if not (value > 0 and value != float("inf")):
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: allowed {allowed}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value" messages
    return parse


positive_int = _number(int, "an integer >= 1")
positive_float = _number(float, "a number > 0")


def add_workspace_argument(p: argparse.ArgumentParser) -> None:
    """``--workspace/-w`` with the default every command shares."""
    from fastif_core.workspace.layout import default_workspace

    p.add_argument(
        "--workspace",
        "-w",
        type=Path,
        default=default_workspace(),
        help="workspace directory (default: $FASTIF_WORKSPACE or ./workspaces/demo)",
    )


def progress_bar(desc: str = "matrix") -> Progress:
    """A progress callback drawing a tqdm bar (in ‰ of the whole) on stderr."""
    from tqdm.auto import tqdm

    bar = tqdm(total=1000, desc=desc, unit="‰", leave=False)

    def report(fraction: float, message: str) -> None:
        bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
        bar.set_postfix_str(message[:60], refresh=True)
        if fraction >= 1.0:
            bar.close()

    return report
