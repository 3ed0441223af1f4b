"""argparse value types and options shared by every ``fastif`` subcommand module (a leaf: argparse only, so the
command modules import it without importing each other). A bad value becomes argparse's one-line error
naming the option and the allowed values, exit status 2."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
