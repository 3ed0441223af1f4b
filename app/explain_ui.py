"""The Explain page's widgets (``simulate_controls`` only returns settings) and drawings (only draw):
Fig. 5's loss-change curves with min/max bands per explanation kind."""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from app import palette
from app.controls import FilterOptions
from fastif_core.apps.simulate.config import DEFAULT_K, KINDS, SimulateConfig, TestFilter
from fastif_core.config import help_of

KIND_COLORS = {"helpful": palette.HELPFUL_COLOR, "harmful": palette.HARMFUL_COLOR, "random": "#868e96"}
GROUP_TITLES = {"correct": "Correct predictions", "incorrect": "Incorrect predictions"}


def simulate_controls(options: FilterOptions, num_train: int) -> SimulateConfig | None:
    """The "Run a study" form (defaults of ``fastif simulate``); the settings when submitted."""
    d = SimulateConfig()
    with st.form("simulate_form", border=True):
        c1, c2, c3, c4 = st.columns(4)
        t = c1.number_input(
            "Test examples", 2, 1000, d.test_examples, help=help_of(SimulateConfig, "test_examples")
        )
        n = c2.number_input(
            "Learning rates", 1, 500, d.learning_rates, help=help_of(SimulateConfig, "learning_rates")
        )
        per = c3.number_input("Per kind", 1, 100, d.per_kind, help=help_of(SimulateConfig, "per_kind"))
        seed = c4.number_input("Seed", 0, 2**31 - 1, d.seed, help=help_of(SimulateConfig, "seed"))
        f1, f2, f3, f4 = st.columns(4)
        dataset = f1.multiselect("Dataset", options.datasets, key="s_dataset", placeholder="All")
        split = f2.multiselect(
            "Split", [s for s in options.splits if s != "train"], key="s_split", placeholder="All"
        )
        genre = f3.multiselect("MNLI genre", options.genres, key="s_genre", placeholder="All")
        heuristic = f4.multiselect("HANS heuristic", options.heuristics, key="s_heur", placeholder="All")
        with st.expander("Advanced"):
            a1, a2, a3, a4 = st.columns(4)
            lr_min = a1.number_input("Smallest lr", 1e-9, 1.0, d.lr_min, format="%.2e")
            lr_max = a2.number_input("Largest lr", 1e-9, 10.0, d.lr_max, format="%.2e")
            k = a3.number_input(
                "k candidates",
                1,
                max(1, num_train),
                min(DEFAULT_K, max(1, num_train)),
                help=help_of(SimulateConfig, "k"),
            )
            full = a4.toggle("Full (all training examples)", False)
        submitted = st.form_submit_button("Run the study", type="primary", icon=":material/science:")
    if not submitted:
        return None
    flt = TestFilter(
        dataset=tuple(dataset), split=tuple(split), genre=tuple(genre), heuristic=tuple(heuristic)
    )
    return SimulateConfig(
        test_examples=int(t),
        learning_rates=int(n),
        lr_min=float(lr_min),
        lr_max=float(lr_max),
        per_kind=int(per),
        seed=int(seed),
        k=None if full else int(k),
        filter=flt,
    )


def curves_frame(curves: dict[str, Any], lrs: list[float], kinds: tuple[str, ...] = KINDS) -> pd.DataFrame:
    """One row per (kind, learning rate): mean, min and max loss change (kinds without a curve left out)."""
    rows = [
        {"kind": kind, "lr": lr, "mean": c["mean"][i], "min": c["min"][i], "max": c["max"][i]}
        for kind in kinds
        if (c := curves.get(kind))
        for i, lr in enumerate(lrs)
    ]
    return pd.DataFrame(rows, columns=["kind", "lr", "mean", "min", "max"])


def curves_chart(frame: pd.DataFrame, title: str) -> None:
    """Mean loss change per kind against the learning rate (log axis), the min/max band shaded."""
    colors = alt.Scale(domain=list(KIND_COLORS), range=list(KIND_COLORS.values()))
    base = alt.Chart(frame, title=title).encode(
        x=alt.X("lr:Q", scale=alt.Scale(type="log"), title="learning rate", axis=alt.Axis(format=".0e")),
        color=alt.Color("kind:N", scale=colors, title="explanations"),
    )
    band = base.mark_area(opacity=0.15).encode(y=alt.Y("min:Q", title="simulator loss change"), y2="max:Q")
    line = base.mark_line(point=True).encode(
        y="mean:Q",
        tooltip=[
            "kind",
            alt.Tooltip("lr:Q", format=".2e"),
            alt.Tooltip("mean:Q", format="+.4f"),
            alt.Tooltip("min:Q", format="+.4f"),
            alt.Tooltip("max:Q", format="+.4f"),
        ],
    )
    st.altair_chart(band + line, width="stretch")


def summary_frame(summary: dict[str, Any]) -> pd.DataFrame:
    """Per group and kind: test examples, best learning rate, loss change there and over the grid."""
    rows = []
    for group in GROUP_TITLES:
        for kind, k in summary[group]["kinds"].items():
            if k is not None:
                rows.append(
                    {
                        "predictions": group,
                        "kind": kind,
                        "test examples": summary[group]["n"],
                        "best lr": f"{k['best_lr']:.2e}",
                        "Δ loss at best lr": k["best_change"],
                        "mean Δ loss over the grid": k["grid_mean_change"],
                    }
                )
    return pd.DataFrame(rows)


def finding_lines(finding: dict[str, Any]) -> list[str]:
    """The paper's claim on this run, one line per group."""
    words = {True: ":green[yes]", False: ":red[no]", None: "—"}
    say = {
        "correct_helpful_beats_random": "Correct predictions: helpful explanations lower the loss more than random",
        "incorrect_harmful_beats_random": "Incorrect predictions: harmful explanations lower the loss more than "
        "random",
    }
    return [
        f"{say.get(k, k)}: at the best lr {words[v['best_lr']]}, over the grid {words[v['grid']]}"
        for k, v in finding.items()
    ]


def aggregate(result: dict[str, Any]) -> None:
    """Fig. 5's aggregate: the mean curves (band: min/max over test examples) by correct / incorrect."""
    cols = st.columns(2)
    for col, (group, title) in zip(cols, GROUP_TITLES.items(), strict=True):
        g = result["summary"][group]
        with col:
            frame = curves_frame(g["kinds"], result["learning_rates"])
            if frame.empty:
                st.info(f"No {group} test examples in this study.")
            else:
                curves_chart(frame, f"{title} (n = {g['n']})")
    for line in finding_lines(result["summary"]["finding"]):
        st.markdown(line)
    st.dataframe(summary_frame(result["summary"]), hide_index=True, width="stretch")


def example_label(ex: dict[str, Any]) -> str:
    verdict = "correct" if ex["correct"] else "incorrect"
    return f"{ex['example_id']} · {verdict} · gold {ex['label']}, predicted {ex['predicted']}"
