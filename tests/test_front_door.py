"""The front door: ``import fastif_core`` is cheap (no torch), ``__all__`` names what exists, and the
README's "From Python" block runs as written on a real tiny workspace and gives the answer the CLI
reads back from the store."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet() -> str:
    """The first ```python block after the "## From Python" heading."""
    text = README.read_text()
    section = text[text.index("## From Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_importing_the_package_is_cheap_and_all_names_exist():
    code = "import sys, fastif_core as f; print(sorted(f.__all__)); print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(README.parent)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    names, torch_loaded = out.stdout.splitlines()
    assert torch_loaded == "False", "import fastif_core must not import torch"
    import fastif_core

    assert all(hasattr(fastif_core, n) for n in fastif_core.__all__) and "influence" in names


def test_the_readme_example_runs_and_matches_the_cli(tiny_workspace: Path):
    from fastif_core.cli import main

    code = readme_snippet().replace('"workspaces/demo"', repr(str(tiny_workspace)))
    assert code != readme_snippet()  # the block names the workspace we replace
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), namespace)
    answer, matrix, test = namespace["answer"], namespace["matrix"], namespace["test"]
    assert answer["cached"] is False and len(answer["helpful"]) == 3
    assert matrix.values.shape == (1, 20) and len(printed.getvalue().splitlines()) == 4
    cli = io.StringIO()
    with contextlib.redirect_stdout(cli):
        assert (
            main(
                [
                    "influence",
                    "-w",
                    str(tiny_workspace),
                    "--example",
                    test,
                    "--k",
                    "20",
                    "--top",
                    "3",
                    "--device",
                    "cpu",
                    "--json",
                ]
            )
            == 0
        )
    stored = json.loads(cli.getvalue())
    assert stored["cached"] is True and stored["run_id"] == answer["run_id"]  # one computation, one store
    assert stored["helpful"] == answer["helpful"]  # the same stored rows: equal, not close
