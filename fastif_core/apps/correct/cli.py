"""``fastif correct`` (error correction / data augmentation by influence) and ``fastif versions`` (list,
activate, compare model versions). Torch is imported only inside the commands, so ``--help`` stays instant.

``fastif correct`` runs in this process by default; ``--submit`` queues the same settings as a
``correct`` job for the worker instead (progress in ``fastif jobs`` and the dashboard).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from fastif_core.apps.correct.config import METHODS, CorrectConfig
from fastif_core.cli.options import add_workspace_argument, positive_float, positive_int
from fastif_core.config import GRADIENT_L2, PRESETS, STestConfig, help_of


def _common(p: argparse.ArgumentParser) -> None:
    """``--workspace`` and ``--device`` as every ``fastif`` command has them."""
    add_workspace_argument(p)
    p.add_argument(
        "--device", default="auto", help="torch device: auto (CUDA if present, else cpu), cpu, cuda:N"
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``correct``, ``corrections`` and ``versions`` subcommands on the ``fastif`` parser."""
    _add_correct(sub)
    _add_corrections(sub)
    _add_versions(sub)


def _add_correct(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "correct",
        help="fix a slice the model gets wrong by gradient steps on influential examples (Sec. 6.3)",
        description="For I iterations: draw A anchors from the target slice, score the k nearest training (or "
        "--pool) examples by influence on the anchors' mean loss, take one SGD step on the top m; compare "
        "helpful, harmful, random and anchors over S seeds on every slice's evaluation part and held-out data.",
    )
    _common(p)
    d = CorrectConfig()
    p.add_argument("--slice", default=d.slice, help=help_of(CorrectConfig, "slice"))
    p.add_argument("--pool", default=d.pool, help=help_of(CorrectConfig, "pool"))
    p.add_argument("--pool-size", type=positive_int, default=None, help=help_of(CorrectConfig, "pool_size"))
    for name, kind in (
        ("iterations", positive_int),
        ("anchors", positive_int),
        ("k", positive_int),
        ("top", positive_int),
        ("lr", positive_float),
        ("seeds", positive_int),
        ("seed", int),
        ("anchor_fraction", float),
        ("max_eval", positive_int),
    ):
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=getattr(d, name),
            help=help_of(CorrectConfig, name),
        )
    p.add_argument("--split-seed", type=int, default=None, help=help_of(CorrectConfig, "split_seed"))
    p.add_argument("--methods", default=",".join(METHODS), help=help_of(CorrectConfig, "methods"))
    p.add_argument("--heldout", default=d.heldout, help=help_of(CorrectConfig, "heldout"))
    p.add_argument("--save", choices=METHODS, default=None, help=help_of(CorrectConfig, "save"))
    p.add_argument(
        "--preset", choices=PRESETS, default="default", help="s_test settings preset (see `fastif influence`)"
    )
    p.add_argument(
        "--depth",
        type=positive_int,
        default=None,
        help=f"{help_of(STestConfig, 'depth')} (default: the preset's)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help=f"{help_of(STestConfig, 'batch_size')} (default: the preset's)",
    )
    p.add_argument(
        "--gradient-l2",
        choices=GRADIENT_L2,
        default=d.gradient_l2,
        help=help_of(CorrectConfig, "gradient_l2"),
    )
    p.add_argument(
        "--submit", action="store_true", help="queue a `correct` job for the worker instead of running here"
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_correct)


def correct_config_from_args(a: argparse.Namespace) -> CorrectConfig:
    given = {k: v for k, v in (("depth", a.depth), ("batch_size", a.batch_size)) if v is not None}
    methods = tuple(m.strip() for m in a.methods.split(",") if m.strip())
    return CorrectConfig(
        slice=a.slice,
        pool=a.pool,
        pool_size=a.pool_size,
        iterations=a.iterations,
        anchors=a.anchors,
        k=a.k,
        top=a.top,
        lr=a.lr,
        seeds=a.seeds,
        seed=a.seed,
        split_seed=a.split_seed,
        methods=methods,
        anchor_fraction=a.anchor_fraction,
        max_eval=a.max_eval,
        heldout=a.heldout,
        s_test=STestConfig.preset(a.preset, **given),
        gradient_l2=a.gradient_l2,
        save=a.save,
    ).validate()


def cmd_correct(a: argparse.Namespace) -> int:
    cfg = correct_config_from_args(a)
    if a.submit:
        return _submit(a, cfg)
    from tqdm.auto import tqdm

    from fastif_core.apps.correct.job import check_settings, run_correction
    from fastif_core.device import resolve_device

    check_settings(a.workspace, cfg)  # one line for a bad slice before the model loads
    bar = tqdm(total=1000, desc="correct", unit="‰", leave=False)

    def report(fraction: float, message: str) -> None:
        bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
        bar.set_postfix_str(message, refresh=True)

    try:
        out = run_correction(a.workspace, cfg, device=str(resolve_device(a.device)), progress=report)
    finally:
        bar.close()
    print(json.dumps(out, indent=2) if a.json else format_correction(out))
    return 0


def _submit(a: argparse.Namespace, cfg: CorrectConfig) -> int:
    from dataclasses import replace

    from fastif_core import jobs
    from fastif_core.apps.correct.job import check_settings
    from fastif_core.store import Store

    model_id, _ = check_settings(a.workspace, cfg)
    with Store.open(a.workspace) as store:
        job = jobs.enqueue(store, "correct", replace(cfg, model_id=model_id))
    row = {"id": job.id, "kind": job.kind, "status": job.status, "params": job.params}
    print(json.dumps(row, indent=2) if a.json else f"job {job.id} (correct): {job.status}")
    return 0


def format_correction(out: dict[str, Any]) -> str:
    """Accuracy before and after (mean [min, max] over seeds) per evaluation part and method."""
    lines = [
        f"target {out['target']} · pool {out['pool']['source']} ({out['pool']['size']}) · model "
        f"{out['model_id']}" + (" [cached]" if out.get("cached") else "")
    ]
    for part, before in out["before"].items():
        lines.append(f"  {part:<48} n={before['n']:<5} before {before['accuracy']:.3f}")
        for method, m in out["methods"].items():
            acc = m["summary"].get(part, {}).get("accuracy")
            if acc:
                lines.append(
                    f"      {method:<8} after {acc['mean'][-1]:.3f} [{acc['min'][-1]:.3f}, {acc['max'][-1]:.3f}]"
                )
    if out.get("saved"):
        lines.append(f"saved model version {out['saved']['model_id']} ({out['saved']['method']})")
    return "\n".join(lines)


def _add_corrections(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "corrections",
        help="stored correction / augmentation runs, the seeds of one comparison merged",
        description="Runs that differ only in --seed/--seeds (same split, settings, model and `before`; e.g. "
        "`--seed s --seeds 1 --split-seed 0` on several machines) are one comparison: listed once, with the "
        "mean [min, max] over all their distinct seeds.",
    )
    add_workspace_argument(p)
    p.add_argument(
        "--kind", choices=("correct", "augment"), default=None, help="only this kind (default: both)"
    )
    p.add_argument(
        "--slice", default=None, help="only runs with this target slice (as given to `fastif correct`)"
    )
    p.add_argument("--model", type=int, default=None, help="only runs of this model version (default: all)")
    p.add_argument(
        "--import",
        dest="imports",
        nargs="+",
        metavar="FILE",
        default=[],
        help="first store these runs (the JSON `fastif correct --json` printed, in a workspace prepared with "
        "the same model, settings and data: another machine or day)",
    )
    p.add_argument(
        "--markdown",
        action="store_true",
        help="print each comparison as a markdown table (final accuracy, mean [min, max] over seeds)",
    )
    p.add_argument("--json", action="store_true", help="print the merged results as a JSON list")
    p.set_defaults(func=cmd_corrections)


def cmd_corrections(a: argparse.Namespace) -> int:
    from fastif_core.apps.correct.stored import import_runs, stored_comparisons
    from fastif_core.apps.correct.summary import markdown_table

    for done in import_runs(a.workspace, a.imports) if a.imports else []:
        state = "imported as" if done["imported"] else "already stored as"
        print(f"{done['file']}: {state} run {done['run_id']}", file=sys.stderr if a.json else sys.stdout)
    merged = stored_comparisons(a.workspace, kind=a.kind, target=a.slice, model_id=a.model)
    if a.json:
        print(json.dumps(merged, indent=2))
        return 0
    if not merged:
        print("no stored correction runs match")
    for out in merged:
        print(
            f"runs {', '.join(map(str, out['run_ids']))} · seeds {out['seed_list']} · {out['seconds']['total']:.0f} s"
        )
        if a.markdown:
            print(
                f"target {out['target']} · {out['kind']} · pool {out['pool']['source']} ({out['pool']['size']})\n"
            )
            print(markdown_table(out) + "\n")
        else:
            print(format_correction(out))
    return 0


def _add_versions(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("versions", help="list model versions; activate one; compare two")
    _common(p)
    p.add_argument(
        "--activate", type=int, metavar="ID", help="serve model version ID (builds its index if missing)"
    )
    p.add_argument(
        "--compare", type=int, nargs=2, metavar=("A", "B"), help="accuracy per slice and changed predictions"
    )
    p.add_argument(
        "--limit", type=positive_int, default=20, help="changed examples listed by --compare (default 20)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_versions)


def cmd_versions(a: argparse.Namespace) -> int:
    from fastif_core.workspace import versions

    if a.activate is not None:
        from fastif_core.device import resolve_device

        versions.activate(a.workspace, a.activate, device=str(resolve_device(a.device)))
    if a.compare:
        out: Any = versions.compare(a.workspace, a.compare[0], a.compare[1], limit=a.limit)
    else:
        out = {"versions": versions.list_versions(a.workspace)}
    if a.json:
        print(json.dumps(out, indent=2))
    elif a.compare:
        print(
            f"models {out['a']} -> {out['b']}: {out['changed']} predictions changed ({out['fixed']} fixed, "
            f"{out['broken']} broken)"
        )
    else:
        for v in out["versions"]:
            print(
                f"{'*' if v['active'] else ' '} {v['id']:>4} {v['name']:<48} {v['method']:<22} parent {v['parent_model_id']}"
            )
    return 0
