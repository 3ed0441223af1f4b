"""Bench: the latest ``fastif bench`` result stored in the workspace (tables and plots; no torch here)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from app import data_access as da
from fastif_core.benchmarks.plots import figures


def speed_frame(result: dict[str, Any]) -> pd.DataFrame:
    """Table 1: one row per configuration, median and quartiles of seconds, speed-up over full."""
    rows = []
    for name, r in result["speed"]["single"]["rows"].items():
        sec = r["seconds"]
        rows.append(
            {
                "row": name,
                "candidates": r["candidates"],
                "preset": r["preset"],
                "J": r["s_test"]["depth"],
                "B": r["s_test"]["batch_size"],
                "median s": sec["median"],
                "q1": sec["q1"],
                "q3": sec["q3"],
                "speed-up": r["speedup_vs_full"],
            }
        )
    return pd.DataFrame(rows)


def quality_frame(result: dict[str, Any]) -> pd.DataFrame:
    """Table 3: mean ± std of each correlation with full enumeration, per row and group."""
    rows = []
    for name, r in result["quality"]["rows"].items():
        for group, stats in r["by_group"].items():
            cells = {m: _pm(stats[m]) for m in ("pearson", "spearman", "kendall")}
            rows.append({"row": name, "group": group, "n": stats["pearson"]["n"], **cells})
    return pd.DataFrame(rows)


def _pm(stat: dict[str, Any]) -> str:
    return "—" if stat.get("mean") is None else f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def retrain_frame(section: dict[str, Any]) -> pd.DataFrame:
    """Mean actual vs predicted change in test loss per kind and m."""
    rows = []
    for kind, by_m in section["by_kind"].items():
        for m, v in by_m.items():
            rows.append(
                {
                    "removed": kind,
                    "m": int(m),
                    "actual Δ loss": v["actual"]["mean"],
                    "predicted Δ loss": v["predicted"]["mean"],
                }
            )
    return pd.DataFrame(rows)


def header(bench: Any) -> None:
    result, s = bench.result, bench.result["settings"]
    st.caption(
        f"Bench #{bench.id} ({bench.kind}) from {result['created']} on {result['device']} "
        f"({result['threads']} threads) · N = {result['num_train']} training examples · "
        f"{len(result['test_examples'])} test examples · J = {s['depth']}, original B = {s['original_batch']}"
        + (" (scaled down from the paper's J = 1000, B = 128)" if s["scaled_down"] else "")
    )
    eng, lat = result["engine"], result["latency"]["seconds"]
    c1, c2, c3, c4 = st.columns(4)
    c1.metric(
        "kNN speed-up (best row)",
        f"{max(r['speedup_vs_full'] for r in result['speed']['single']['rows'].values()):.1f}×",
    )
    c2.metric("One click", f"{lat['total']:.2f} s")
    c3.metric("JVP vs per-example backward", f"{eng['jvp_speedup_vs_reference']:.1f}×")
    c4.metric("Scoring cost vs a forward", f"{eng['scoring_cost_vs_forward']:.2f}×")


def sections(result: dict[str, Any]) -> None:
    figs = figures(result)
    st.subheader("Speed (Table 1)")
    st.dataframe(speed_frame(result), hide_index=True, width="stretch")
    st.plotly_chart(figs["speed"], width="stretch")
    st.subheader("One click")
    st.plotly_chart(figs["latency"], width="stretch")
    st.subheader("Engine")
    st.plotly_chart(figs["engine"], width="stretch")
    st.subheader("Quality (Table 3)")
    st.dataframe(quality_frame(result), hide_index=True, width="stretch")
    st.plotly_chart(figs["quality"], width="stretch")
    st.subheader("kNN recall")
    st.plotly_chart(figs["recall"], width="stretch")
    st.subheader("s_test trade-off")
    st.dataframe(pd.DataFrame(result["lissa_tradeoff"]["points"]), hide_index=True, width="stretch")
    st.plotly_chart(figs["lissa_tradeoff"], width="stretch")
    st.subheader("Retraining check")
    for name in ("convex", "transformer"):
        if result["retrain"].get(name):
            st.markdown(
                f"**{name}**: Pearson(predicted, actual) = {result['retrain'][name]['pearson_predicted_vs_actual']}"
            )
            st.dataframe(retrain_frame(result["retrain"][name]), hide_index=True, width="stretch")
    st.plotly_chart(figs["retrain"], width="stretch")
    with st.expander("bench.json"):
        st.json(result, expanded=False)


root = da.workspace_root()
st.title("Bench")
latest = da.store(root).latest_bench()
if latest is None:
    st.info(
        f"No benchmark stored yet. Run `fastif bench --workspace {root} --out bench-out --quick` "
        "(minutes) or without `--quick` for the full comparison."
    )
    st.stop()
header(latest)
sections(latest.result)
