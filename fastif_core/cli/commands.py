"""The ``fastif`` command line (also ``python -m fastif_core``).

Commands: ``prepare``, ``examples``, ``influence`` (here), ``worker`` and ``jobs`` (:mod:`fastif_core.cli.jobs`),
``submit``, ``bench``, ``corpus`` (:mod:`fastif_core.cli.corpus`), ``matrix`` (:mod:`fastif_core.cli.many`), and
the applications' ``graph``, ``correct`` / ``corrections`` / ``versions`` and ``simulate`` (each
``fastif_core.apps.<name>.cli``).
Every user error (bad file, unknown id, missing workspace, bad setting) exits 2 with one clear line on
stderr, never a traceback. Heavy modules (torch, transformers, faiss) are imported inside the command
that needs them so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fastif_core.apps.correct.cli import add_parser as add_correct_parser
from fastif_core.apps.graph.cli import add_parser as add_graph_parser
from fastif_core.apps.simulate import cli as simulate_cli
from fastif_core.cli import corpus as cli_corpus
from fastif_core.cli import jobs as cli_jobs
from fastif_core.cli import many as cli_many
from fastif_core.cli import sketch as cli_sketch
from fastif_core.cli.options import add_workspace_argument, positive_int
from fastif_core.config import (
    GRADIENT_L2,
    PRESETS,
    InfluenceConfig,
    KnnConfig,
    PrepareConfig,
    STestConfig,
    TrainConfig,
    help_of,
)
from fastif_core.errors import ConfigError, FastifError

Command = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse with fastif's error rule: a bad option is one line on stderr and exit status 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default="auto", help="torch device: auto (CUDA if present, else cpu), cpu, cuda:N"
    )


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="import data, fine-tune the model, store predictions, build the kNN index",
        description="Turn a data source and a model into a ready workspace. Re-running with the same "
        "arguments reuses what is already there.",
    )
    _prepare_options(p)
    cli_sketch.add_prepare_sketch_option(p)
    p.set_defaults(func=cmd_prepare)


def _prepare_options(p: argparse.ArgumentParser) -> None:
    add_workspace_argument(p)
    d, t = PrepareConfig(), TrainConfig()
    p.add_argument("--train", default=d.train, help=help_of(PrepareConfig, "train"))
    p.add_argument(
        "--eval",
        dest="evals",
        action="append",
        default=[],
        metavar="SOURCE",
        help="evaluation source (repeatable): a file path or hf:<dataset>[:<split>]",
    )
    p.add_argument("--max-train", type=int, default=None, help=help_of(PrepareConfig, "max_train"))
    p.add_argument("--max-eval", type=positive_int, default=None, help=help_of(PrepareConfig, "max_eval"))
    p.add_argument(
        "--fit-subset",
        type=positive_int,
        default=None,
        metavar="N",
        help=help_of(PrepareConfig, "fit_subset"),
    )
    p.add_argument("--holdout", type=float, default=d.holdout, help=help_of(PrepareConfig, "holdout"))
    p.add_argument("--demo-size", type=int, default=d.demo_size, help=help_of(PrepareConfig, "demo_size"))
    p.add_argument("--model", default=None, help=help_of(PrepareConfig, "model"))
    p.add_argument("--epochs", type=float, default=t.epochs, help=help_of(TrainConfig, "epochs"))
    p.add_argument("--batch-size", type=int, default=t.batch_size, help=help_of(TrainConfig, "batch_size"))
    p.add_argument("--lr", type=float, default=t.lr, help=help_of(TrainConfig, "lr"))
    p.add_argument(
        "--weight-decay", type=float, default=t.weight_decay, help=help_of(TrainConfig, "weight_decay")
    )
    p.add_argument(
        "--freeze-layers", type=int, default=t.freeze_layers, help=help_of(TrainConfig, "freeze_layers")
    )
    p.add_argument(
        "--train-embeddings",
        action="store_true",
        help="fine-tune the embeddings too (default: frozen, as in the paper)",
    )
    p.add_argument("--max-length", type=int, default=t.max_length, help=help_of(TrainConfig, "max_length"))
    p.add_argument(
        "--labels", type=int, choices=(2, 3), default=t.labels, help=help_of(TrainConfig, "labels")
    )
    p.add_argument("--seed", type=int, default=t.seed, help=help_of(TrainConfig, "seed"))
    p.add_argument("--neighbors", type=int, default=d.neighbors, help=help_of(PrepareConfig, "neighbors"))
    p.add_argument(
        "--neighbors-index",
        default=d.neighbors_index,
        metavar="auto|exact|FACTORY",
        help=help_of(PrepareConfig, "neighbors_index"),
    )
    p.add_argument("--index", default=KnnConfig().index, help=help_of(KnnConfig, "index"))
    p.add_argument(
        "--nprobe", type=positive_int, default=KnnConfig().nprobe, help=help_of(KnnConfig, "nprobe")
    )
    _device_arg(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def prepare_config_from_args(a: argparse.Namespace) -> PrepareConfig:
    train = TrainConfig(
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        weight_decay=a.weight_decay,
        freeze_layers=a.freeze_layers,
        freeze_embeddings=not a.train_embeddings,
        max_length=a.max_length,
        seed=a.seed,
        labels=a.labels,
    )
    return PrepareConfig(
        train=a.train,
        evals=tuple(a.evals),
        max_train=a.max_train,
        max_eval=a.max_eval,
        fit_subset=a.fit_subset,
        holdout=a.holdout,
        model=a.model,
        train_config=train,
        neighbors=a.neighbors,
        neighbors_index=a.neighbors_index,
        knn=KnnConfig(index=a.index, nprobe=a.nprobe),
        demo_size=a.demo_size,
    ).validate()


def cmd_prepare(a: argparse.Namespace) -> int:
    from fastif_core.device import resolve_device
    from fastif_core.measure import measured
    from fastif_core.workspace.prepare import prepare, record_phase

    device = str(resolve_device(a.device))
    manifest = prepare(a.workspace, prepare_config_from_args(a), device=device)
    sketch, phase = measured(
        lambda: cli_sketch.sketch_after_prepare(a.workspace, manifest, a.sketches, device), "sketches"
    )
    if sketch is not None and not manifest.get("reused"):  # a reused prepare stays a no-op
        built = {**phase, "status": sketch.get("status")}
        manifest = record_phase(a.workspace, manifest["build"], "sketches", built) or manifest
    if a.json:
        print(json.dumps({**manifest, "sketch": sketch}, indent=2))
    else:
        print(format_manifest(manifest))
        if sketch is not None:
            print(cli_sketch.format_prepare_sketch(a.workspace, sketch))
    return 0


def format_manifest(m: dict[str, Any]) -> str:
    """Accuracy per eval set and per slice, as aligned text."""
    fitted = f" (the model fine-tuned on {m['num_fit']})" if m.get("fit_subset") else ""
    lines = [
        f"workspace ready ({'reused' if m.get('reused') else 'built'} in {m.get('seconds', 0):.1f} s): "
        f"{m['num_train']} training examples{fitted}, model {m['model_id']}"
    ]
    for name, rep in m.get("accuracy", {}).items():
        lines.append(f"  {name:<32} n={rep['n']:<6} accuracy {rep['accuracy']:.3f}")
        for key, groups in rep.get("slices", {}).items():
            if key == "subcase":  # 30 rows for HANS: in --json and the dashboard
                continue
            for value, g in groups.items():
                lines.append(f"      {key}={value:<30} n={g['n']:<6} accuracy {g['accuracy']:.3f}")
    return "\n".join(lines)


def _add_examples(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("examples", help="list examples with their labels and predictions")
    add_workspace_argument(p)
    p.add_argument("--dataset", help="only this dataset (e.g. demo, demo-hans, mnli)")
    p.add_argument("--split", help="only this split (train, heldout, challenge, ...)")
    p.add_argument("--incorrect", action="store_true", help="only examples the model gets wrong")
    p.add_argument("--limit", type=positive_int, default=20, help="at most this many rows (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON (one object with a list of examples)")
    p.set_defaults(func=cmd_examples)


def cmd_examples(a: argparse.Namespace) -> int:
    from fastif_core.queries.examples import list_examples

    rows = list_examples(a.workspace, dataset=a.dataset, split=a.split, incorrect=a.incorrect, limit=a.limit)
    if a.json:
        print(json.dumps({"examples": rows}, indent=2))
        return 0
    for r in rows:
        mark = "" if r.get("correct") in (None, True) else "  ✗"
        print(
            f"{r['id']:<24} {r['dataset']}/{r['split']:<10} gold={r['label']:<15} pred={r.get('predicted')}{mark}"
        )
    return 0


def _add_influence(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "influence",
        help="most helpful and harmful training examples for one example (or many: --examples)",
        description="Influence I(z, z_test) = -grad L(z_test)^T H^-1 grad L(z): negative = helpful, "
        "positive = harmful. Scores the k nearest training examples (--full: all of them) with the "
        "s_test of --preset (default: the engine's default solver).",
    )
    _influence_options(p)
    p.set_defaults(func=cmd_influence)


def _influence_options(p: argparse.ArgumentParser) -> None:
    add_workspace_argument(p)
    p.add_argument("--example", default=None, help="example id (see `fastif examples`)")
    cli_many.add_selection_options(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--k", type=int, default=InfluenceConfig().k, help=help_of(InfluenceConfig, "k"))
    mode.add_argument("--full", action="store_true", help="score all training examples")
    p.add_argument(
        "--preset",
        choices=PRESETS,
        default="default",
        help="s_test settings: default (the benchmark's choice, see the README) | paper (FastIF's LiSSA "
        "J=1000, B=1, d=5e-3, s=1e4) | original (LiSSA B=128) | lissa_batched | gauss_newton_cg | "
        "gauss_newton_direct (the B=64 Gauss-Newton system solved exactly); "
        "the flags below override single fields",
    )
    for name, kind in _S_TEST_FLAGS:
        flag = "--" + name.replace("_", "-")
        p.add_argument(
            flag, type=kind, default=None, help=f"{help_of(STestConfig, name)} (default: the preset's)"
        )
    p.add_argument(
        "--gradient-l2",
        choices=GRADIENT_L2,
        default=InfluenceConfig().gradient_l2,
        help=help_of(InfluenceConfig, "gradient_l2"),
    )
    p.add_argument("--top", type=int, default=InfluenceConfig().top, help=help_of(InfluenceConfig, "top"))
    cli_sketch.add_method_options(p)  # --method exact | sketch
    _device_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")


_S_TEST_FLAGS = (
    ("solver", str),
    ("curvature", str),
    ("depth", int),
    ("batch_size", int),
    ("repeats", int),
    ("damping", float),
    ("scale", float),
    ("mu", float),
    ("tolerance", float),
    ("window", int),
    ("seed", int),
)


def influence_config_from_args(a: argparse.Namespace) -> InfluenceConfig:
    """The preset's s_test settings with every explicit flag applied on top; --full = all candidates."""
    given = {name: getattr(a, name) for name, _ in _S_TEST_FLAGS if getattr(a, name) is not None}
    s_test = STestConfig.preset(a.preset, **given)
    return InfluenceConfig(
        s_test=s_test, k=None if a.full else a.k, top=a.top, gradient_l2=a.gradient_l2
    ).validate()


def cmd_influence(a: argparse.Namespace) -> int:
    from fastif_core.device import resolve_device
    from fastif_core.queries.influence import influence_query

    cfg = influence_config_from_args(a)
    if a.method == "sketch":
        return cli_sketch.cmd_influence_sketch(a, cfg, str(resolve_device(a.device)), format_influence)
    if cli_many.is_many(a):
        return cli_many.cmd_influence_many(a, cfg, str(resolve_device(a.device)), format_influence)
    result = influence_query(
        a.workspace, a.example, cfg, device=str(resolve_device(a.device)), show_progress=True
    )
    if a.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_influence(result))
    return 0


def format_influence(r: dict[str, Any]) -> str:
    s = r["seconds"]
    lines = [
        f"example {r['example_id']}: {r['num_candidates']} candidates, {s['total']:.2f} s "
        f"(knn {s['knn']:.2f}, s_test {s['s_test']:.2f}, scoring {s['scoring']:.2f})"
        + (" [cached]" if r["cached"] else "")
    ]
    for title, rows in (("most helpful (negative)", r["helpful"]), ("most harmful (positive)", r["harmful"])):
        lines.append(f"{title}:")
        for row in rows:
            lines.append(
                f"  {row['influence']:+.4e}  {row['train_id']:<20} [{row['label']}] "
                f"{row['premise']} || {row['hypothesis']}"
            )
    return "\n".join(lines)


def _add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="queue a job for the worker (the same one twice = one job)")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    inf = kinds.add_parser(
        "influence", help="influence for one or many examples (options of `fastif influence`)"
    )
    _influence_options(inf)
    inf.add_argument(
        "--rerank",
        type=positive_int,
        default=None,
        help="with --method sketch: the sketch's top helpful and top harmful re-scored exactly together "
        "with the kNN set (a sketch_click job, the dashboard's click; default 100)",
    )
    inf.set_defaults(func=cmd_submit)
    prep = kinds.add_parser("prepare", help="prepare the workspace (same options as `fastif prepare`)")
    _prepare_options(prep)
    prep.set_defaults(func=cmd_submit)


def cmd_submit(a: argparse.Namespace) -> int:
    """Queue a job; an influence job is checked (prepared workspace, known example, k) and keyed by the
    workspace's model, so after a re-prepare the same request is a new job."""
    from fastif_core import jobs
    from fastif_core.queries.examples import require_example
    from fastif_core.queries.influence import check_request
    from fastif_core.store import Store
    from fastif_core.workspace.layout import require_prepared

    kind, params = a.kind, None
    if a.kind == "influence" and getattr(a, "rerank", None) is not None and a.method != "sketch":
        raise ConfigError("--rerank is invalid without --method sketch: allowed with --method sketch only")
    if a.kind == "influence":
        manifest, cfg = require_prepared(a.workspace), influence_config_from_args(a)
        check_request(manifest, cfg)
        if a.method == "sketch":  # the dashboard's click: the sketch list over all N, then the exact re-rank
            kind, params = "sketch_click", cli_sketch.click_params(a, cfg, int(manifest["model_id"]))
        elif cli_many.is_many(a):  # several examples: one influence_many job
            kind, params = "influence_many", cli_many.many_params(a, cfg, int(manifest["model_id"]))
        else:
            params = jobs.InfluenceParams(
                example_id=a.example, config=cfg, model_id=int(manifest["model_id"])
            )
    else:
        params = prepare_config_from_args(a)
    store = Store.open(a.workspace)
    try:
        if kind in ("influence", "sketch_click"):
            require_example(store, a.example, params.model_id)
        job = jobs.enqueue(store, kind, params)
    finally:
        store.close()
    print(
        json.dumps(cli_jobs.job_to_dict(job), indent=2)
        if a.json
        else f"job {job.id} ({job.kind}): {job.status}"
    )
    return 0


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="speed and quality benchmarks (the paper's Table 1, Table 3, Fig. 3, Fig. 4, App. A)",
        add_help=False,
        prefix_chars="\x00",
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)


def cmd_bench(a: argparse.Namespace) -> int:
    """Parsed by the benchmark module itself, so `fastif --help` does not import torch."""
    from fastif_core import benchmarks

    parser = Parser(prog="fastif bench", description=benchmarks.__doc__.splitlines()[0])
    add_workspace_argument(parser)
    benchmarks.add_arguments(parser)
    return int(benchmarks.run_from_args(parser.parse_args(a.rest)) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fastif", description="Fast influence functions (FastIF) for transformer NLP models."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_prepare,
        _add_examples,
        _add_influence,
        cli_jobs.add_worker,
        _add_submit,
        cli_jobs.add_jobs,
        _add_bench,
        cli_corpus.add_parser,
        add_graph_parser,
    ):
        add(sub)
    add_correct_parser(sub)
    simulate_cli.add_parser(sub)
    cli_many.add_matrix_parser(sub, _influence_options, influence_config_from_args)
    cli_sketch.add_sketch_parser(sub, _device_arg)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FastifError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if type(exc).__module__.startswith("sqlalchemy"):  # e.g. a database locked for longer than the wait
            from fastif_core.store.engine import describe_db_error, resolve_url

            url = resolve_url(getattr(args, "workspace", None))
            print(f"error: {one_line(describe_db_error(exc, url))}", file=sys.stderr)
            return 2
        raise


def one_line(text: str) -> str:
    """A message as one line (a user error is one line on stderr, whatever produced it)."""
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


if __name__ == "__main__":
    sys.exit(main())
