"""``fastif bench``: is fastif fast, and do its shortcuts cost quality? (FastIF Sec. 5, Table 1, Table 3, App. A)

``run_bench(workspace, out_dir, test_examples=10, quick=False, devices="cpu:1", retrain=False, progress=cb)``
writes ``out_dir/bench.json``, one HTML plot per section (plus PNG when kaleido is installed) and stores the
result in the workspace (``Store.save_bench``; the dashboard's Bench page reads ``Store.latest_bench()``).
Modules: ``speed`` (Table 1, latency), ``quality`` (Table 3, recall), ``lissa_grid``, ``retrain``,
``plots`` (plotly only, no torch), ``suite`` (the orchestration); the engine ratios come from
:mod:`fastif_core.benchmarks.engine`. Rows: ``full`` = every training example scored with the 'original' s_test preset
(B large, T=1); ``knn{k}/{preset}`` = the k nearest training examples with that preset ('fast' is B=1).
Sections of their own (``--section``, each its own JSON in ``out_dir``): ``solvers``, ``many``, ``sketch`` and
``damping`` (:mod:`fastif_core.benchmarks.damping`, ``damping.json``: influence against the damping μ; with
``--retrain``, :mod:`fastif_core.benchmarks.damping_retrain`, ``damping-retrain.json``: retraining per μ) and
``scale`` (:mod:`fastif_core.benchmarks.scale`, ``scale.json``: FAISS, the pages' store queries, a click,
the graph and the job queue on a prepared workspace, each part with its seconds and peak RSS).

Keys of ``bench.json`` (times in seconds; a "spread" is ``{n, median, q1, q3, min, max, mean}``; a
"mean±std" is ``{mean, std, n}``; groups are ``all`` / ``correct`` / ``incorrect`` test predictions):

=====================================  ==================================================================
key                                    meaning
=====================================  ==================================================================
``settings``                           the resolved BenchConfig (``depth``, ``original_batch``, grids, ...),
                                       ``presets`` (the LissaConfigs used), ``ks_used`` (ks clipped to N),
                                       ``scaled_down`` (true when not the paper's J=1000, B=128/1) and ``paper``
``num_train``, ``trainable_params``    N training examples; P parameters of the influence objective
``device``, ``threads``, ``host``      where it ran
``test_examples``                      ``[{id, correct, label, timed}]``: half correct, half incorrect
                                       non-training examples, seeded; ``timed`` false = values from the store
``engine``                             :func:`fastif_core.benchmarks.engine.engine_benchmark`: ``forward``, ``scoring``
                                       (``jvp``, ``reference``, their ``values`` on the reference rows
                                       and ``agreement``), ``hvp`` per method, the ratios
                                       ``jvp_speedup_vs_reference`` and ``scoring_cost_vs_forward``
``speed.single.rows.<row>``            Table 1, one process: ``candidates``, ``preset``, ``lissa``,
                                       ``seconds`` (spread over test examples), ``per_example``,
                                       ``speedup_vs_full`` (median full / median row)
``speed.single.stages.<stage>``        spread of each stage: ``test_gradient``, ``s_test/<preset>``,
                                       ``score/full``, ``knn/<k>``, ``score/<preset>/<k>``
``speed.single.s_test.<preset>``       mean±std of ``cos_with_gradient`` (cosine of s_test with the test
                                       gradient: near 1, the Hessian barely moved it) and ``cos_with_original``
``speed.multi``                        the same rows end to end on every device of ``--devices``
                                       (``devices``, ``world_size``, ``rows``), null with one device
``latency``                            one dashboard click (its pre-filled preset for this hardware): ``config``, ``seconds`` (``knn``,
                                       ``test_gradient``, ``s_test``, ``scoring``, ``total``), ``share``
``quality.rows.knn<k>/<preset>``       Table 3: ``by_group.<group>.<pearson|spearman|kendall>`` mean±std over
                                       test examples of the correlation with full over the k candidates;
                                       ``per_example``. The 'original' rows are the full-vs-full check (= 1)
``recall``                             ``ks``, ``ms``, ``num_train``, ``random`` (k/N),
                                       ``by_group.<group>.<m>.<helpful|harmful|unsigned>`` (R@m per k),
                                       ``examples`` (count per group)
``lissa_tradeoff``                     ``reference`` (J, B, T), ``points``: ``[{depth, batch_size, repeats,
                                       hvp_examples, seconds, error_norm, rel_std, norm, influence_pearson}]``
``retrain.convex``                     ``model``, ``weight_decay``, ``ms``, ``by_kind.<helpful|harmful|random>.<m>``
                                       (``actual``, ``predicted`` mean±std of Δ test loss),
                                       ``pearson_predicted_vs_actual``, ``signs_at_max_m``, ``points``,
                                       ``max_final_grad_norm``
``retrain.transformer``                the same on the fine-tuned transformer (``--retrain``), else null
``plots``                              ``html`` / ``png`` file names in the output directory, ``png_error``
``seconds``, ``created``               wall-clock of the whole bench; UTC timestamp
``complete``                           false while sections are still running: ``bench.json`` is rewritten
                                       after each one, so an interrupted run keeps what it measured
``non_finite``                         ``[{path, value}]``: numbers that were inf / -inf / nan, written as null
                                       (JSON has none), e.g. ``lissa_tradeoff.points.3.rel_std``
=====================================  ==================================================================
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fastif_core.apps.graph.config import SLICE_BY
from fastif_core.config import PRESETS

__all__ = ["add_arguments", "config_from_args", "format_summary", "run_bench", "run_from_args"]


def run_bench(workspace: str | Path, out_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """See :func:`fastif_core.benchmarks.suite.run_bench` (imported lazily: torch is heavy)."""
    from fastif_core.benchmarks.suite import run_bench as run

    return run(workspace, out_dir, **kwargs)


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from exc


SOLVER_PARTS = (
    "reference",
    "compare",
    "l2",
    "click",
)  # fastif_core.benchmarks.solvers.PARTS (not imported here)
DAMPING_RETRAIN_MS = (10, 100)  # fastif_core.benchmarks.damping_retrain.DEFAULT_MS (not imported here)


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = sorted(set(parts) - set(SOLVER_PARTS))
    if unknown or not parts:
        raise argparse.ArgumentTypeError(
            f"{text!r}: allowed a comma-separated subset of {', '.join(SOLVER_PARTS)}"
        )
    return parts


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed I/N with integers 0 <= I < N") from exc
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed I/N with integers 0 <= I < N")
    return i, n


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fastif bench`` but ``--workspace``, which the CLI adds as for every command (the
    CLI's subparser delegates here; this module never imports the CLI)."""
    p.add_argument("--out", type=Path, required=True, help="output directory for bench.json and the plots")
    p.add_argument("--test-examples", type=int, default=10, help="test examples, half correct (default 10)")
    p.add_argument("--quick", action="store_true", help="tiny settings: minutes on a small workspace")
    p.add_argument("--devices", default="cpu:1", help="cpu:1 (default) | auto | cpu:N | cuda | cuda:0,cuda:1")
    p.add_argument("--retrain", action="store_true", help="also retrain the transformer (slow)")
    p.add_argument("--timed-examples", type=int, default=None, help="time only the first N test examples")
    p.add_argument(
        "--ks", type=_ints, default=(100, 1000), help="kNN sizes, comma-separated (default 100,1000)"
    )
    p.add_argument(
        "--depth", type=int, default=None, help="LiSSA depth J of both presets (default by hardware)"
    )
    p.add_argument(
        "--original-batch", type=int, default=None, help="B of the original preset (default by hardware)"
    )
    p.add_argument("--grid-depths", type=_ints, default=None, help="J values of the s_test grid")
    p.add_argument("--grid-batches", type=_ints, default=None, help="B values of the s_test grid")
    p.add_argument("--grid-repeats", type=_ints, default=None, help="T values of the s_test grid")
    p.add_argument(
        "--retrain-examples", type=int, default=2, help="test examples of the transformer retraining"
    )
    p.add_argument(
        "--click-preset",
        choices=["default", "scaled"],
        default=None,
        help="latency of one click with the dashboard's default preset or the run's scaled one",
    )
    p.add_argument("--seed", type=int, default=0, help="seed (test examples, LiSSA, random removal)")
    p.add_argument(
        "--section",
        choices=["all", "solvers", "many", "sketch", "damping", "scale"],
        default="all",
        help="all: every section (bench.json); solvers: only the s_test solver comparison (solvers.json, "
        "resumable: reference repetitions are kept under OUT/reference); many: many test examples at once "
        "(many.json: batched vs single queries, the full matrix, the scoring cross-over, matrix store I/O); "
        "damping: influence against the damping mu (damping.json, resumable: cells under OUT/damping-cache); "
        "scale: what each page and query costs at this N (scale.json, resumable per part)",
    )
    p.add_argument(
        "--many-tests",
        type=int,
        default=32,
        help="many: test examples of the batched-vs-single row (0: skip it, e.g. to measure the cross-over)",
    )
    p.add_argument(
        "--matrix-tests",
        type=int,
        default=400,
        help="many: test examples of the full matrix (0: skip it, e.g. when `fastif matrix --full` measures it)",
    )
    p.add_argument(
        "--many-preset",
        choices=PRESETS,
        default="default",
        help="many: s_test preset of both sides (default: the engine's default; gauss_newton_direct makes "
        "s_test cheap, so the rows compare scoring)",
    )
    p.add_argument(
        "--ref-repeats", type=int, default=8, help="solvers: repetitions T of the paper's LiSSA reference"
    )
    p.add_argument(
        "--solver-k", type=int, default=1000, help="solvers, many, damping: candidates per test example"
    )
    p.add_argument(
        "--l2-examples", type=int, default=10, help="solvers: test examples of the L2 convention check"
    )
    p.add_argument(
        "--solver-parts",
        type=_parts,
        default=None,
        help="solvers: comma-separated subset of reference, compare, l2, click (default all); the results "
        "of the other parts are kept from OUT/solvers.json",
    )
    p.add_argument(
        "--ref-shard",
        type=_shard,
        default=(0, 1),
        metavar="I/N",
        help="solvers: fill the reference of every N-th test example from the I-th (N processes, e.g. one "
        "thread each with OMP_NUM_THREADS=1, share the reference; the cache is the same); damping: sweep "
        "every N-th test example from the I-th into the shared cache (OUT/damping-shardIofN.json)",
    )
    p.add_argument(
        "--only-solvers",
        default=None,
        help="solvers: comma-separated subset of paper, lissa_batched, gn_cg_b16, gn_cg_b32, gn_cg_b64, hessian_cg_b16",
    )

    _sketch_arguments(p)
    _damping_arguments(p)
    _scale_arguments(p)


def _sketch_arguments(p: argparse.ArgumentParser) -> None:
    """``--section sketch`` (issue 27, :mod:`fastif_core.benchmarks.sketch`)."""
    p.add_argument("--sketch-ks", type=_ints, default=(8, 16, 32), help="sketch: factor widths k per layer")
    p.add_argument("--sketch-projections", default="gaussian,orthogonal", help="sketch: projections compared")
    p.add_argument(
        "--sketch-small-k",
        type=int,
        default=16,
        help="sketch: k of the variant keeping biases and LayerNorm parameters exactly (0: none)",
    )
    p.add_argument(
        "--sketch-mc-k", type=int, default=16, help="sketch: k of the Monte-Carlo-rows variant (0: none)"
    )
    p.add_argument("--sketch-click-k", type=int, default=16, help="sketch: k of the click and matrix timings")
    p.add_argument(
        "--sketch-recall-ks", type=_ints, default=(100, 1000), help="sketch: k of the recall figures"
    )
    p.add_argument(
        "--sketch-reference",
        choices=PRESETS,
        default="gauss_newton_cg",
        help="sketch: preset of the exact --full reference (Gauss-Newton on the seeded batch, μ = 50)",
    )
    p.add_argument(
        "--sketch-parts",
        default=",".join(("reference", "build", "compare", "click")),
        help="sketch: comma-separated subset of reference, build, compare, click",
    )
    p.add_argument(
        "--sketch-time-examples", type=int, default=256, help="sketch: examples of the timed single build"
    )
    p.add_argument(
        "--sketch-matrix-tests", type=int, default=400, help="sketch: tests of the matrix from sketches"
    )
    p.add_argument(
        "--sketch-only",
        default="",
        help="sketch: compare only these variants (e.g. g8,o8; the "
        "others' figures in OUT/sketch.json are kept)",
    )


def _mus(text: str) -> tuple[float, ...]:
    allowed = f"{text!r}: allowed a comma-separated list of numbers > 0 (e.g. 50,5,0.5,0.05)"
    try:
        mus = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(allowed) from exc
    if not mus or not all(0.0 < m < float("inf") for m in mus):
        raise argparse.ArgumentTypeError(allowed)
    return mus


def _positive(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed an integer >= 1")
    return int(text)


def _damping_arguments(p: argparse.ArgumentParser) -> None:
    """``--section damping`` (issue 28, :mod:`fastif_core.benchmarks.damping`); k is ``--solver-k``."""
    p.add_argument(
        "--damping-mus",
        type=_mus,
        default=(50.0, 5.0, 0.5, 0.05),
        help="damping: the values of mu, comma-separated (default 50,5,0.5,0.05; the default preset's 50 "
        "is always included)",
    )
    p.add_argument(
        "--retrain-ms",
        type=_ints,
        default=None,
        help="training examples removed per retraining (default 1,5,25; damping: 10,100)",
    )
    p.add_argument(
        "--retrain-max-runs",
        type=_positive,
        default=None,
        help="damping --retrain: fine-tune at most this many plan items in this run (the rest resume later)",
    )
    p.add_argument(
        "--damping-preset",
        choices=["default", "gauss_newton_direct"],
        default="default",
        help="damping: s_test solver of the sweep: default (Gauss-Newton CG, iterations grow as mu falls) "
        "or gauss_newton_direct (the same system solved exactly, one Woodbury factor per mu for all tests)",
    )
    p.add_argument(
        "--damping-depth",
        type=_positive,
        default=None,
        help="damping: most CG iterations per solve (default: the default preset's)",
    )


SCALE_PARTS = ("faiss", "neighbours", "browse", "example", "click", "sketch", "graph", "import", "jobs")


def _scale_parts(text: str) -> tuple[str, ...]:
    parts = tuple(x.strip() for x in text.split(",") if x.strip())
    if not parts or set(parts) - set(SCALE_PARTS):
        raise argparse.ArgumentTypeError(
            f"{text!r}: allowed a comma-separated subset of {', '.join(SCALE_PARTS)}"
        )
    return parts


def _naturals(text: str) -> tuple[int, ...]:
    values = _ints(text)
    if min(values, default=0) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: allowed comma-separated integers >= 0")
    return values


def _scale_arguments(p: argparse.ArgumentParser) -> None:
    """``--section scale`` (issue 29, :mod:`fastif_core.benchmarks.scale`)."""
    p.add_argument(
        "--scale-parts",
        type=_scale_parts,
        default=SCALE_PARTS,
        help=f"scale: comma-separated subset of {', '.join(SCALE_PARTS)} (default all); a part already in "
        "OUT/scale.json for the same build and options is kept, not measured again",
    )
    p.add_argument("--scale-fresh", action="store_true", help="scale: measure every part again")
    p.add_argument("--scale-repeats", type=_positive, default=3, help="scale: runs per timing (the median)")
    p.add_argument("--scale-k", type=_positive, default=100, help="scale: k of the FAISS recall@k and query")
    p.add_argument("--scale-queries", type=_positive, default=1000, help="scale: held-out FAISS queries")
    p.add_argument(
        "--scale-nlist",
        type=int,
        default=0,
        help="scale: IVF cells (0: about 4·sqrt(N), >= 39 rows per cell)",
    )
    p.add_argument(
        "--scale-nprobes", type=_ints, default=(1, 8, 32), help="scale: IVF nprobe values (clipped to nlist)"
    )
    p.add_argument(
        "--scale-page-size", type=_positive, default=2000, help="scale: Browse page rows (the table's 2,000)"
    )
    p.add_argument(
        "--scale-offsets",
        type=_naturals,
        default=(),
        help="scale: Browse page offsets (default 0, 2000, the middle and the last page)",
    )
    p.add_argument("--scale-search", default="the", help="scale: the Browse text search")
    p.add_argument("--scale-click-k", type=_positive, default=1000, help="scale: k of the exact click")
    p.add_argument(
        "--scale-click-examples", type=_positive, default=3, help="scale: held-out examples clicked"
    )
    p.add_argument(
        "--scale-graph-per-slice", type=_positive, default=100, help="scale: graph test examples per slice"
    )
    p.add_argument("--scale-graph-k", type=_positive, default=1000, help="scale: graph candidates per test")
    p.add_argument(
        "--scale-graph-preset", choices=PRESETS, default="default", help="scale: s_test preset of the graph"
    )
    p.add_argument(
        "--scale-graph-slice-by",
        choices=SLICE_BY,
        default="auto",
        help="scale: how the graph's test set is sliced (the Graphs page's choice; auto = heuristic or dataset)",
    )
    p.add_argument(
        "--scale-graph-any-prediction",
        action="store_true",
        help="scale: graph tests drawn among all held-out examples, not only the incorrectly predicted ones",
    )
    p.add_argument(
        "--scale-jobs", type=_positive, default=5000, help="scale: jobs inserted into the database copy"
    )
    p.add_argument(
        "--scale-neighbors-index",
        default="auto",
        metavar="auto|exact|FACTORY",
        help="scale: the index the neighbours part lists with (as prepare's --neighbors-index)",
    )
    p.add_argument(
        "--scale-db-url",
        default="",
        help="scale: a scratch server database (e.g. postgresql://localhost/fastif_scale; it must hold no "
        "examples) that the import and jobs parts write into, instead of temporary SQLite files",
    )


def run_scale(a: argparse.Namespace, progress: Any) -> dict[str, Any]:
    """``fastif bench --section scale``: OUT/scale.json."""
    from fastif_core.benchmarks.scale import ScaleOptions, run_section

    options = ScaleOptions(
        parts=a.scale_parts,
        repeats=a.scale_repeats,
        fresh=a.scale_fresh,
        knn_k=a.scale_k,
        queries=a.scale_queries,
        nlist=a.scale_nlist,
        nprobes=a.scale_nprobes,
        page_size=a.scale_page_size,
        offsets=a.scale_offsets,
        search=a.scale_search,
        click_k=a.scale_click_k,
        click_examples=a.scale_click_examples,
        graph_per_slice=a.scale_graph_per_slice,
        graph_k=a.scale_graph_k,
        graph_preset=a.scale_graph_preset,
        graph_slice_by=a.scale_graph_slice_by,
        graph_incorrect_only=not a.scale_graph_any_prediction,
        jobs=a.scale_jobs,
        db_url=a.scale_db_url,
        neighbors_index=a.scale_neighbors_index,
        seed=a.seed,
    )
    return run_section(Path(a.workspace), Path(a.out), options, progress)


def run_damping(a: argparse.Namespace, progress: Any) -> dict[str, Any]:
    """``fastif bench --section damping``: OUT/damping.json on ``--test-examples`` balanced test examples."""
    from fastif_core.benchmarks.common import choose_test_examples
    from fastif_core.benchmarks.damping import run_section
    from fastif_core.device import resolve_device
    from fastif_core.store import Store
    from fastif_core.workspace.layout import LoadedWorkspace

    device = "cpu" if a.devices == "cpu:1" else str(resolve_device("auto"))
    loaded = LoadedWorkspace.load(a.workspace, device)
    with Store.open(a.workspace) as store:
        pool = choose_test_examples(store, loaded, a.test_examples, a.seed)
    return run_section(
        loaded,
        _balanced_head(pool, a.test_examples),
        Path(a.out),
        mus=a.damping_mus,
        k=a.solver_k,
        seed=a.seed,
        depth=a.damping_depth,
        preset=a.damping_preset,
        shard=a.ref_shard,
        retrain=None
        if not a.retrain
        else {
            "examples": a.retrain_examples,
            "ms": a.retrain_ms or DAMPING_RETRAIN_MS,
            "max_runs": a.retrain_max_runs,
        },
        progress=progress,
    )


def run_sketch(a: argparse.Namespace, progress: Any) -> dict[str, Any]:
    """``fastif bench --section sketch``: OUT/sketch.json."""
    from fastif_core.benchmarks.sketch import PARTS, run_section
    from fastif_core.errors import ConfigError

    parts = tuple(x.strip() for x in a.sketch_parts.split(",") if x.strip())
    if not parts or set(parts) - set(PARTS):
        raise ConfigError(
            f"--sketch-parts {a.sketch_parts!r}: allowed a comma-separated subset of {', '.join(PARTS)}"
        )
    projections = [x.strip() for x in a.sketch_projections.split(",") if x.strip()]
    return run_section(
        Path(a.workspace),
        Path(a.out),
        tests_n=a.test_examples,
        seed=a.seed,
        ks=list(a.sketch_ks),
        projections=projections,
        small_k=a.sketch_small_k,
        mc_k=a.sketch_mc_k,
        recall_ks=list(a.sketch_recall_ks),
        preset=a.sketch_reference,
        parts=parts,
        time_examples=a.sketch_time_examples,
        matrix_tests=a.sketch_matrix_tests,
        click_k=a.sketch_click_k,
        only=tuple(x for x in a.sketch_only.split(",") if x),
        progress=progress,
    )


def config_from_args(a: argparse.Namespace) -> Any:
    """The BenchConfig of parsed ``fastif bench`` arguments."""
    from fastif_core.benchmarks.common import BenchConfig

    return BenchConfig(
        test_examples=a.test_examples,
        timed_examples=a.timed_examples,
        quick=a.quick,
        devices=a.devices,
        retrain=a.retrain,
        seed=a.seed,
        ks=a.ks,
        depth=a.depth,
        original_batch=a.original_batch,
        grid_depths=a.grid_depths,
        grid_batches=a.grid_batches,
        grid_repeats=a.grid_repeats,
        retrain_examples=a.retrain_examples,
        **({} if a.retrain_ms is None else {"retrain_ms": a.retrain_ms}),
        latency_default_preset=None if a.click_preset is None else a.click_preset == "default",
    )


def run_from_args(a: argparse.Namespace) -> int:
    """``fastif bench``: run with a tqdm progress bar, print the summary tables, exit status 0."""
    from tqdm.auto import tqdm

    from fastif_core.workspace.layout import require_prepared

    config = config_from_args(a).validate()
    require_prepared(a.workspace)  # bad settings or workspace: one error line, before any progress bar
    bars: list[Any] = []

    def progress(fraction: float, message: str) -> None:
        if not bars:
            bars.append(tqdm(total=1000, desc="bench", unit="‰"))
        bars[0].n = int(1000 * min(max(fraction, 0.0), 1.0))
        bars[0].set_postfix_str(message[:60], refresh=True)

    try:
        if a.section == "sketch":
            result = run_sketch(a, progress)
        elif a.section == "scale":
            result = run_scale(a, progress)
        elif a.section == "damping":
            result = run_damping(a, progress)
        elif a.section == "solvers":
            result = run_solvers(a, progress)
        elif a.section == "many":
            result = run_many(a, progress)
        else:
            result = run_bench(a.workspace, a.out, config=config, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    if a.section == "sketch":
        from fastif_core.benchmarks.sketch import report

        print(report(result))
        print(f"\nwrote {Path(a.out) / 'sketch.json'}")
        return 0
    if a.section == "scale":
        from fastif_core.benchmarks.scale import report as scale_report

        print(scale_report(result))
        print(f"\nwrote {Path(a.out) / 'scale.json'}")
        return 0
    if a.section == "damping":
        from fastif_core.benchmarks.report import damping_text

        print(damping_text(result))
        i, n = a.ref_shard
        print(f"\nwrote {Path(a.out) / ('damping.json' if n == 1 else f'damping-shard{i}of{n}.json')}")
        if "retrain" in result:
            from fastif_core.benchmarks.report import damping_retrain_text

            print("\n" + damping_retrain_text(result["retrain"]))
            print(f"\nwrote {Path(a.out) / 'damping-retrain.json'}")
        return 0
    if a.section == "many":
        print(json.dumps({k: v for k, v in result.items() if k != "crossover"}, indent=2, default=str))
        print(f"\nwrote {Path(a.out) / 'many.json'}")
        return 0
    if a.section == "solvers":
        from fastif_core.benchmarks.report import solver_text

        print(solver_text(result))
        print(f"\nwrote {Path(a.out) / 'solvers.json'}")
        return 0
    print(format_summary(result))
    print(f"\nwrote {Path(a.out) / 'bench.json'} and {len(result['plots']['html'])} plots")
    return 0


def run_solvers(a: argparse.Namespace, progress: Any) -> dict[str, Any]:
    """``fastif bench --section solvers``: the s_test solver comparison on the workspace's test examples."""
    from fastif_core.benchmarks.common import choose_test_examples
    from fastif_core.benchmarks.solvers import PARTS, default_solvers, run_solver_section
    from fastif_core.errors import ConfigError
    from fastif_core.store import Store
    from fastif_core.workspace.layout import LoadedWorkspace

    solvers = default_solvers()
    if a.only_solvers:
        names = [n.strip() for n in a.only_solvers.split(",") if n.strip()]
        unknown = sorted(set(names) - set(solvers))
        if unknown:
            raise ConfigError(f"--only-solvers: unknown {unknown}; allowed {sorted(solvers)}")
        solvers = {n: solvers[n] for n in names}
    loaded = LoadedWorkspace.load(a.workspace, "cpu")
    store = Store.open(a.workspace)
    try:
        pool = choose_test_examples(store, loaded, max(a.test_examples, a.l2_examples), a.seed)
    finally:
        store.close()
    examples = _balanced_head(pool, a.test_examples)
    return run_solver_section(
        loaded,
        examples,
        Path(a.out),
        ref_repeats=a.ref_repeats,
        k=a.solver_k,
        l2_examples=pool[: a.l2_examples],
        solvers=solvers,
        progress=progress,
        parts=a.solver_parts or PARTS,
        ref_shard=a.ref_shard,
    )


def run_many(a: argparse.Namespace, progress: Any) -> dict[str, Any]:
    """``fastif bench --section many``: :mod:`fastif_core.benchmarks.many` on the workspace's test examples,
    with the s_test of ``--many-preset`` at k = ``--solver-k`` and seed ``--seed``."""
    from fastif_core.benchmarks.common import choose_test_examples
    from fastif_core.benchmarks.many import run_section
    from fastif_core.config import InfluenceConfig, STestConfig
    from fastif_core.device import resolve_device
    from fastif_core.store import Store
    from fastif_core.workspace.layout import LoadedWorkspace

    device = "cpu" if a.devices == "cpu:1" else str(resolve_device("auto"))
    loaded = LoadedWorkspace.load(a.workspace, device)
    with Store.open(a.workspace) as store:
        n = max(a.many_tests, a.matrix_tests)
        pool = choose_test_examples(store, loaded, n, a.seed) if n > 0 else []
    cfg = InfluenceConfig(
        s_test=STestConfig.preset(a.many_preset, seed=a.seed), k=min(a.solver_k, len(loaded.train_ids))
    )
    ids = [e.id for e in pool]
    return run_section(
        loaded, ids[: a.many_tests], ids[: a.matrix_tests], cfg, Path(a.out), progress=progress
    )


def _balanced_head(pool: list[Any], n: int) -> list[Any]:
    """The first n//2 correctly and n - n//2 incorrectly predicted examples of a seeded pool, interleaved."""
    good = [e for e in pool if e.correct][: n - n // 2]
    bad = [e for e in pool if not e.correct][: n // 2]
    return [e for pair in zip(good, bad, strict=False) for e in pair] + good[len(bad) :] + bad[len(good) :]


def format_summary(result: dict[str, Any]) -> str:
    """The headline tables of a bench result as plain text."""
    from fastif_core.benchmarks.report import summary_text

    return summary_text(result)
