"""``fastif simulate``: the simulatability study in process (``--queue``: as a ``simulate`` job for the
worker). Every bad setting is one line on stderr and exit status 2, before any work."""

from __future__ import annotations

import argparse
import json
from typing import Any

from fastif_core.apps.simulate.config import JOB_KIND, SimulateConfig, SimulateParams, TestFilter
from fastif_core.cli.options import add_workspace_argument
from fastif_core.cli.sketch import add_method_options, query_config_from_args
from fastif_core.config import PRESETS, STestConfig, help_of

FILTERS = ("dataset", "split", "label", "predicted", "genre", "heuristic", "subcase")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``fastif simulate`` on the ``fastif`` subcommands."""
    p = sub.add_parser(
        "simulate",
        help="simulatability: do influential examples help a simulator predict the model? (Fig. 5)",
        description="Train a simulator on the task model's predictions (once), then for T test examples take "
        "one SGD step of it on each of the 10 most helpful, 10 most harmful and 10 random training examples "
        "per label, for every learning rate of a log grid, and report its loss change on the test input "
        "(target: the task model's prediction), split by correct / incorrect predictions.",
    )
    add_workspace_argument(p)
    d = SimulateConfig()
    for name, kind in (
        ("test_examples", int),
        ("learning_rates", int),
        ("lr_min", float),
        ("lr_max", float),
        ("per_kind", int),
        ("seed", int),
        ("simulator_epochs", float),
        ("lr_chunk", int),
    ):
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=getattr(d, name),
            help=help_of(SimulateConfig, name),
        )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--k", type=int, default=d.k, help=help_of(SimulateConfig, "k"))
    mode.add_argument("--full", action="store_true", help="influence over all training examples")
    p.add_argument(
        "--preset", choices=PRESETS, default="default", help="s_test settings (as `fastif influence`)"
    )
    p.add_argument(
        "--depth", type=int, default=None, help=f"{help_of(STestConfig, 'depth')} (default: the preset's)"
    )
    add_method_options(p)  # --method exact | sketch, --sketch-*
    for name in FILTERS:
        p.add_argument(
            "--" + name,
            action="append",
            default=None,
            metavar="VALUE",
            help=f"test examples with this {name} only (repeatable: any of the values)",
        )
    p.add_argument(
        "--search", default=None, help="test examples whose premise, hypothesis or id contain this"
    )
    p.add_argument(
        "--device", default="auto", help="torch device: auto (CUDA if present, else cpu), cpu, cuda:N"
    )
    p.add_argument("--queue", action="store_true", help="queue a `simulate` job for the worker instead")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_simulate)


def config_from_args(a: argparse.Namespace) -> SimulateConfig:
    """The validated SimulateConfig of the command line (ConfigError naming the field otherwise)."""
    s_test = STestConfig.preset(a.preset, **({} if a.depth is None else {"depth": a.depth}))
    flt = TestFilter(**{n: tuple(getattr(a, n)) for n in FILTERS if getattr(a, n)}, search=a.search or None)
    return SimulateConfig(
        test_examples=a.test_examples,
        learning_rates=a.learning_rates,
        lr_min=a.lr_min,
        lr_max=a.lr_max,
        per_kind=a.per_kind,
        seed=a.seed,
        k=None if a.full else a.k,
        s_test=s_test,
        method=a.method,
        sketch=query_config_from_args(a),
        filter=flt,
        simulator_epochs=a.simulator_epochs,
        lr_chunk=a.lr_chunk,
    ).validate()


def cmd_simulate(a: argparse.Namespace) -> int:
    from fastif_core import jobs
    from fastif_core.apps.simulate.explanations import select_test_examples
    from fastif_core.store import Store
    from fastif_core.workspace.layout import require_prepared

    cfg = config_from_args(a)
    model_id = int(require_prepared(a.workspace)["model_id"])
    with Store.open(a.workspace) as store:
        select_test_examples(store, model_id, cfg)  # the filter has enough examples: checked before any work
        if a.queue:
            job = jobs.enqueue(store, JOB_KIND, SimulateParams(config=cfg, model_id=model_id))
            row = {"id": job.id, "kind": job.kind, "status": job.status, "params": job.params}
            print(json.dumps(row, indent=2) if a.json else f"job {job.id} ({job.kind}): {job.status}")
            return 0
    from fastif_core.apps.simulate.run import simulate
    from fastif_core.device import resolve_device
    from fastif_core.queries.influence import _chain, _tqdm

    bar = _tqdm(True)
    try:
        out = simulate(a.workspace, cfg, device=str(resolve_device(a.device)), progress=_chain(None, bar))
    finally:
        bar.close()
    print(json.dumps(out, indent=2) if a.json else format_summary(out))
    return 0


def format_summary(out: dict[str, Any]) -> str:
    """Per group and kind: the mean loss change at the best learning rate and over the grid."""
    s, secs = out["summary"], out["seconds"]
    lines = [
        f"simulation {out['simulation_id']} (model {out['model_id']}, simulator {out['simulator']['model_id']}"
        f"{', cached' if out['cached'] else ''}): {len(out['examples'])} test examples, "
        f"{len(out['learning_rates'])} learning rates; {secs['total']:.1f} s (simulator {secs['simulator']:.1f}, "
        f"influence {secs['influence']:.1f}, measurement {secs['measurement']:.1f})"
    ]
    for group in ("correct", "incorrect"):
        g = s[group]
        lines.append(f"{group} predictions (n={g['n']}, loss before {g['loss_before'] or float('nan'):.4f}):")
        for kind, k in g["kinds"].items():
            if k is not None and ":" not in kind:
                lines.append(
                    f"  {kind:<8} best lr {k['best_lr']:.2e}: Δloss {k['best_change']:+.4f}   "
                    f"mean over the grid {k['grid_mean_change']:+.4f}"
                )
    lines += [f"{name}: {v}" for name, v in s["finding"].items()]
    return "\n".join(lines)
