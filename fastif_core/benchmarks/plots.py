"""Plotly figures of a ``bench.json`` result, and writing them as HTML (always) and PNG (with kaleido).

Pure plotting: imports plotly only (no torch), so the dashboard can draw a stored result with
:func:`figures`. PNG export needs ``kaleido`` (>= 1.0, which drives a locally installed Chromium; it
works offline): without it only HTML is written and ``bench.json`` says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

KIND_COLOURS = {"helpful": "#2a9d8f", "harmful": "#e76f51", "unsigned": "#6d597a", "random": "#8d99ae"}
GROUP_DASH = {"all": "solid", "correct": "dot", "incorrect": "dash"}


def speed_figure(result: dict[str, Any]) -> go.Figure:
    """Median seconds per Table 1 row (bars: interquartile range), one process vs every device."""
    fig = go.Figure()
    tables = [("1 process", result["speed"]["single"]["rows"])]
    if result["speed"].get("multi"):
        tables.append((result["speed"]["multi"]["devices"], result["speed"]["multi"]["rows"]))
    for name, rows in tables:
        med = [r["seconds"]["median"] for r in rows.values()]
        fig.add_bar(
            name=name,
            x=list(rows),
            y=med,
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [r["seconds"]["q3"] - m for r, m in zip(rows.values(), med, strict=True)],
                "arrayminus": [m - r["seconds"]["q1"] for r, m in zip(rows.values(), med, strict=True)],
            },
            text=[f"{r['speedup_vs_full']:.1f}×" for r in rows.values()],
            textposition="outside",
        )
    fig.update_layout(
        title="Time per test example (median; label = speed-up over full)",
        barmode="group",
        yaxis={"title": "seconds", "type": "log"},
    )
    return fig


def latency_figure(result: dict[str, Any]) -> go.Figure:
    """Where one dashboard click spends its time."""
    secs = result["latency"]["seconds"]
    fig = go.Figure()
    for stage in ("knn", "test_gradient", "s_test", "scoring"):
        fig.add_bar(name=stage, y=["one click"], x=[secs.get(stage, 0.0)], orientation="h")
    fig.update_layout(
        title=f"One click: {secs['total']:.2f} s", barmode="stack", xaxis_title="seconds", height=260
    )
    return fig


def quality_figure(result: dict[str, Any]) -> go.Figure:
    """Correlation of each kNN row's influence with full enumeration (mean ± std over test examples)."""
    rows = result["quality"]["rows"]
    fig = go.Figure()
    for metric in ("pearson", "spearman", "kendall"):
        stats = [r["by_group"]["all"][metric] for r in rows.values()]
        fig.add_bar(
            name=metric,
            x=list(rows),
            y=[s["mean"] for s in stats],
            error_y={"type": "data", "array": [s["std"] for s in stats]},
        )
    fig.update_layout(
        title="Fast vs full influence over the shared candidates",
        barmode="group",
        yaxis={"title": "correlation", "range": [-1, 1.05]},
    )
    return fig


def recall_figure(result: dict[str, Any]) -> go.Figure:
    """R@m against k for each m (rows) and kind (columns), by correct/incorrect, with random selection."""
    rec = result["recall"]
    ms, kinds = [str(m) for m in rec["ms"]], ("helpful", "harmful", "unsigned")
    fig = make_subplots(
        rows=len(ms),
        cols=3,
        shared_xaxes=True,
        shared_yaxes=True,
        subplot_titles=[f"R@{m} {k}" for m in ms for k in kinds],
    )
    for r, m in enumerate(ms, start=1):
        for c, kind in enumerate(kinds, start=1):
            for group, dash in GROUP_DASH.items():
                curve = rec["by_group"][group][m][kind]
                if curve:
                    fig.add_scatter(
                        x=rec["ks"],
                        y=curve,
                        name=group,
                        legendgroup=group,
                        row=r,
                        col=c,
                        showlegend=r == c == 1,
                        line={"dash": dash, "color": KIND_COLOURS[kind]},
                    )
            fig.add_scatter(
                x=rec["ks"],
                y=rec["random"],
                name="random",
                legendgroup="random",
                row=r,
                col=c,
                showlegend=r == c == 1,
                line={"color": KIND_COLOURS["random"]},
            )
    fig.update_xaxes(type="log", title_text="k")
    fig.update_yaxes(range=[0, 1.05])
    fig.update_layout(title="kNN recall of full enumeration's top-m", height=320 * len(ms))
    return fig


def lissa_figure(result: dict[str, Any]) -> go.Figure:
    """s_test trade-off: seconds vs relative error norm for each (J, B, T)."""
    pts = result["lissa_tradeoff"]["points"]
    fig = go.Figure(
        go.Scatter(
            x=[p["seconds"] for p in pts],
            y=[p["error_norm"] for p in pts],
            mode="markers+text",
            text=[f"J={p['depth']} B={p['batch_size']} T={p['repeats']}" for p in pts],
            textposition="top center",
            marker={
                "size": 10,
                "color": [p["influence_pearson"] or 0 for p in pts],
                "colorscale": "Viridis",
                "colorbar": {"title": "influence r"},
            },
        )
    )
    fig.update_layout(
        title="s_test: time vs error (vs the most expensive setting)",
        xaxis={"title": "seconds", "type": "log"},
        yaxis={"title": "‖s − s_ref‖ / ‖s_ref‖"},
    )
    return fig


def retrain_figure(result: dict[str, Any]) -> go.Figure:
    """Predicted vs actual change in test loss after removing training examples, per model and kind."""
    models = [m for m in ("convex", "transformer") if result["retrain"].get(m)]
    fig = make_subplots(rows=1, cols=len(models), subplot_titles=models)
    for c, name in enumerate(models, start=1):
        points = result["retrain"][name]["points"]
        for kind in ("helpful", "harmful", "random"):
            sel = [p for p in points if p["kind"] == kind]
            fig.add_scatter(
                x=[p["predicted"] for p in sel],
                y=[p["actual"] for p in sel],
                mode="markers",
                name=kind,
                legendgroup=kind,
                showlegend=c == 1,
                row=1,
                col=c,
                marker={"color": KIND_COLOURS[kind]},
                text=[f"m={p['m']}" for p in sel],
            )
    fig.update_xaxes(title_text="predicted Δ test loss")
    fig.update_yaxes(title_text="actual Δ test loss")
    fig.update_layout(title="Retraining check: remove top-m, retrain, change in test loss")
    return fig


def engine_figure(result: dict[str, Any]) -> go.Figure:
    """Throughput of the plain forward floor, batched JVP scoring and the per-example backward reference."""
    eng = result["engine"]
    names = ["forward (floor)", "JVP scoring", "backward reference"]
    rates = [
        eng["forward"]["examples_per_s"],
        eng["scoring"]["jvp"]["examples_per_s"],
        eng["scoring"]["reference"]["examples_per_s"],
    ]
    fig = go.Figure(go.Bar(x=names, y=rates, text=[f"{r:.1f}/s" for r in rates], textposition="outside"))
    fig.update_layout(
        title=f"Engine: JVP {eng['jvp_speedup_vs_reference']:.1f}× the reference, "
        f"{eng['scoring_cost_vs_forward']:.2f}× a forward",
        yaxis_title="examples / s",
    )
    return fig


BUILDERS = {
    "speed": speed_figure,
    "latency": latency_figure,
    "quality": quality_figure,
    "recall": recall_figure,
    "lissa_tradeoff": lissa_figure,
    "retrain": retrain_figure,
    "engine": engine_figure,
}


def figures(result: dict[str, Any]) -> dict[str, go.Figure]:
    """Every figure whose section is present in ``result`` (the dashboard draws these)."""
    return {name: build(result) for name, build in BUILDERS.items() if result.get(name)}


def write_plots(result: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """``<name>.html`` for every figure (plotly.js written once beside them, offline) and ``<name>.png``
    when kaleido works; returns ``{"html": [...], "png": [...], "png_error": reason or None}``."""
    figs = figures(result)
    html = []
    for name, fig in figs.items():
        path = out_dir / f"{name}.html"
        fig.write_html(path, include_plotlyjs="directory", full_html=True)
        html.append(path.name)
    png, error = _write_pngs(figs, out_dir)
    return {"html": html, "png": png, "png_error": error}


def _write_pngs(figs: dict[str, go.Figure], out_dir: Path) -> tuple[list[str], str | None]:
    try:
        import kaleido  # noqa: F401
        import plotly.io as pio
    except ImportError:
        return [], "kaleido is not installed (pip install 'kaleido>=1'): HTML plots only"
    paths = [out_dir / f"{name}.png" for name in figs]
    try:
        pio.write_images(list(figs.values()), paths, width=1100, height=None, scale=1)
    except Exception as exc:  # noqa: BLE001 - a missing Chromium must not lose the benchmark
        return [], f"PNG export failed ({type(exc).__name__}: {exc}): HTML plots only"
    return [p.name for p in paths], None
