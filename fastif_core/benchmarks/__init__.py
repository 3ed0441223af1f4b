"""``fastif bench``: is fastif fast, and do its shortcuts cost quality? (FastIF Sec. 5, Table 1, Table 3, App. A)

``run_bench(workspace, out_dir, test_examples=10, quick=False, devices="cpu:1", retrain=False, progress=cb)``
writes ``out_dir/bench.json``, one HTML plot per section (plus PNG when kaleido is installed) and stores the
result in the workspace (``Store.save_bench``; the dashboard's Bench page reads ``Store.latest_bench()``).
Modules: ``speed`` (Table 1, latency), ``quality`` (Table 3, recall), ``lissa_grid``, ``retrain``,
``plots`` (plotly only, no torch), ``suite`` (the orchestration); the engine ratios come from
:mod:`fastif_core.bench`. Rows: ``full`` = every training example scored with the 'original' s_test preset
(B large, T=1); ``knn{k}/{preset}`` = the k nearest training examples with that preset ('fast' is B=1).

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
``engine``                             :func:`fastif_core.bench.engine_benchmark`: ``forward``, ``scoring``
                                       (``jvp``, ``reference``), ``hvp`` per method, the ratios
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
from pathlib import Path
from typing import Any

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fastif bench`` (the CLI's subparser delegates here)."""
    from fastif_core.cli import add_workspace_argument

    add_workspace_argument(p)
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
    p.add_argument("--seed", type=int, default=0, help="seed (test examples, LiSSA, random removal)")  # fmt: skip


def config_from_args(a: argparse.Namespace) -> Any:
    """The BenchConfig of parsed ``fastif bench`` arguments."""
    from fastif_core.benchmarks.common import BenchConfig

    return BenchConfig(
        test_examples=a.test_examples, timed_examples=a.timed_examples, quick=a.quick, devices=a.devices,
        retrain=a.retrain, seed=a.seed, ks=a.ks, depth=a.depth, original_batch=a.original_batch,
        grid_depths=a.grid_depths, grid_batches=a.grid_batches, grid_repeats=a.grid_repeats,
        retrain_examples=a.retrain_examples,
        latency_default_preset=None if a.click_preset is None else a.click_preset == "default",
    )  # fmt: skip


def run_from_args(a: argparse.Namespace) -> int:
    """``fastif bench``: run with a tqdm progress bar, print the summary tables, exit status 0."""
    from tqdm.auto import tqdm

    from fastif_core.workspace import require_prepared

    config = config_from_args(a).validate()
    require_prepared(a.workspace)  # bad settings or workspace: one error line, before any progress bar
    bars: list[Any] = []

    def progress(fraction: float, message: str) -> None:
        if not bars:
            bars.append(tqdm(total=1000, desc="bench", unit="‰"))
        bars[0].n = int(1000 * min(max(fraction, 0.0), 1.0))
        bars[0].set_postfix_str(message[:60], refresh=True)

    try:
        result = run_bench(a.workspace, a.out, config=config, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    print(format_summary(result))
    print(f"\nwrote {Path(a.out) / 'bench.json'} and {len(result['plots']['html'])} plots")
    return 0


def format_summary(result: dict[str, Any]) -> str:
    """The headline tables of a bench result as plain text."""
    from fastif_core.benchmarks.report import summary_text

    return summary_text(result)
