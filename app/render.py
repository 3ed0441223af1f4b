"""Drawing functions only: they take records or frames and put them on the page (no queries)."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app import formatting as fmt
from app import palette
from fastif_core.store.records import (
    ExampleRow,
    ExampleSummary,
    InfluenceRunInfo,
    JobInfo,
    NeighborInfo,
    ScoreInfo,
)

EXAMPLE_PAGE = "views/example.py"


def _label_styler(frame: pd.DataFrame, columns: tuple[str, ...] = ("label", "predicted")):
    present = [c for c in columns if c in frame.columns]
    return frame.style.map(palette.label_cell_style, subset=present) if present else frame


def summary_metrics(summary: ExampleSummary) -> None:
    """Counts and accuracy for the current filter."""
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Matching examples", f"{summary.count:,}")
    c2.metric("With a prediction", f"{summary.predicted:,}")
    c3.metric("Correct", f"{summary.correct:,}")
    acc = summary.accuracy
    c4.metric("Accuracy", "—" if acc is None else f"{acc:.1%}")


def examples_table(frame: pd.DataFrame, key: str = "examples_table") -> list[int]:
    """The sortable examples table; returns the selected row positions (a click selects a row)."""
    event = st.dataframe(
        _label_styler(frame),
        key=key,
        on_select="rerun",
        selection_mode="single-row",
        hide_index=True,
        width="stretch",
        height=420,
        column_config={
            "id": st.column_config.TextColumn("ID", width="medium"),
            "premise": st.column_config.TextColumn("Premise", width="large"),
            "hypothesis": st.column_config.TextColumn("Hypothesis", width="medium"),
            "label": st.column_config.TextColumn("Gold"),
            "predicted": st.column_config.TextColumn("Predicted"),
            "correct": st.column_config.CheckboxColumn("Correct", width="small"),
            "confidence": st.column_config.ProgressColumn(
                "Confidence", format="percent", min_value=0.0, max_value=1.0, width="small"
            ),
            **{
                c: st.column_config.TextColumn(c.capitalize())
                for c in ("dataset", "split", "genre", "heuristic", "subcase")
            },
        },
    )
    return list(event.selection.rows)


def example_header(ex: ExampleRow) -> None:
    """Premise, hypothesis and the example's provenance, readable at any length."""
    st.markdown(f"## Example {fmt.code(ex.id)}")
    st.caption(" · ".join(_provenance(ex)))
    with st.container(border=True):
        st.markdown("**Premise**")
        st.markdown(fmt.md_escape(ex.premise))
        st.markdown("**Hypothesis**")
        st.markdown(fmt.md_escape(ex.hypothesis))


def _provenance(ex: ExampleRow) -> list[str]:
    parts = [f"dataset {ex.dataset}", f"split {ex.split}"]
    parts += [f"{k} {fmt.pretty(v)}" for k, v in sorted(ex.slices.items()) if v]
    if ex.train_pos is not None:
        parts.append("in the training set")
    return parts


def prediction_block(ex: ExampleRow, label_names: list[str]) -> None:
    """Gold and predicted label, correctness, and the class probabilities as a small bar chart."""
    c1, c2 = st.columns(2)
    c1.markdown(f"Gold label {palette.label_badge(ex.label)}")
    if ex.predicted is None:
        c2.markdown("No prediction stored for this example.")
        return
    verdict = ":green[correct]" if ex.correct else ":red[incorrect]"
    c2.markdown(f"Predicted {palette.label_badge(ex.predicted)} — {verdict}")
    if ex.probs and len(ex.probs) == len(label_names):
        with st.columns([3, 2])[0]:
            probability_chart(ex.probs, label_names)


def probability_chart(probs: list[float], label_names: list[str]) -> None:
    """A horizontal bar per class, coloured like the label everywhere else."""
    data = pd.DataFrame({"label": label_names, "probability": probs})
    colors = alt.Scale(domain=label_names, range=[palette.label_color(n) for n in label_names])
    chart = (
        alt.Chart(data, height=34 * len(label_names))
        .mark_bar(cornerRadiusEnd=3)
        .encode(
            x=alt.X(
                "probability:Q",
                scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format="%", tickCount=5),
                title=None,
            ),
            y=alt.Y(
                "label:N", sort=label_names, title=None, axis=alt.Axis(labelOverlap=False, labelLimit=160)
            ),
            color=alt.Color("label:N", scale=colors, legend=None),
            tooltip=["label", alt.Tooltip("probability:Q", format=".1%")],
        )
    )
    st.altair_chart(chart, width="stretch")


def neighbors_table(neighbors: list[NeighborInfo]) -> None:
    """The stored k nearest training neighbours (L2 in the model's feature space)."""
    if not neighbors:
        st.info("No nearest neighbours are stored for this example yet; computing influence stores them.")
        return
    st.dataframe(
        _label_styler(fmt.neighbors_frame(neighbors), ("label",)),
        hide_index=True,
        width="stretch",
        column_config={
            "rank": st.column_config.NumberColumn("Rank", width="small"),
            "distance": st.column_config.NumberColumn("Distance", format="%.3f"),
            "label": st.column_config.TextColumn("Gold"),
            "id": st.column_config.TextColumn("ID"),
            "premise": st.column_config.TextColumn("Premise", width="large"),
            "hypothesis": st.column_config.TextColumn("Hypothesis", width="large"),
        },
    )


def influence_lists(run: InfluenceRunInfo, neighbor_ids: set[str], top: int | None) -> None:
    """Ranked helpful and harmful training examples side by side, each linking to its own view."""
    st.caption(
        f"{run.num_candidates:,} candidates scored in {fmt.seconds(run.timings.get('total'))} · "
        f"{fmt.config_lines(run.config)} · computed {fmt.when(run.created_at)}. "
        "Helpful examples lower this example's loss (negative influence); harmful ones raise it."
    )
    left, right = st.columns(2)
    with left:
        st.markdown(f"##### :blue[Most helpful] ({len(run.helpful(top))})")
        _score_cards(run.helpful(top), neighbor_ids, "helpful")
    with right:
        st.markdown(f"##### :red[Most harmful] ({len(run.harmful(top))})")
        _score_cards(run.harmful(top), neighbor_ids, "harmful")


def _score_cards(scores: list[ScoreInfo], neighbor_ids: set[str], kind: str) -> None:
    if not scores:
        st.caption(f"No {kind} candidates.")
    for i, s in enumerate(scores, start=1):
        with st.container(border=True):
            nn = " · :violet-badge[also a nearest neighbour]" if s.train_id in neighbor_ids else ""
            st.markdown(f"**{i}.** influence `{s.value:+.3e}` · {palette.label_badge(s.label)}{nn}")
            st.markdown(f"{fmt.md_escape(s.premise)}  \n→ *{fmt.md_escape(s.hypothesis)}*")
            st.page_link(
                EXAMPLE_PAGE,
                label=f"Open {s.train_id}",
                query_params={"example": s.train_id},
                icon=":material/open_in_new:",
            )


def job_status(job: JobInfo) -> None:
    """One job's state: a progress bar while it runs, its error when it failed."""
    st.markdown(
        f"Job **#{job.id}** {palette.status_badge(job.status)} · device {job.device or '—'} · {fmt.seconds(job.duration_s)}"
    )
    if job.status in ("queued", "running"):
        text = job.message or ("waiting for the worker" if job.status == "queued" else "running")
        st.progress(min(max(job.progress, 0.0), 1.0), text=text)
    elif job.status == "failed":
        job_error(job)
    elif job.status == "cancelled":
        st.warning(f"Job #{job.id} was cancelled.")


def job_error(job: JobInfo) -> None:
    """Why a job failed, in one line; a traceback (an unexpected crash) goes in a details expander."""
    st.error(f"Job #{job.id} failed after {job.attempts} attempt(s): {fmt.error_summary(job.error)}")
    if job.error and "\n" in job.error.strip():
        with st.expander("Error details"):
            st.code(job.error, language=None)


def jobs_table(frame: pd.DataFrame) -> None:
    """Queue and history of jobs."""
    st.dataframe(
        frame.style.map(palette.status_cell_style, subset=["status"]),
        hide_index=True,
        width="stretch",
        column_config={
            **{
                c: st.column_config.TextColumn(c.capitalize())
                for c in ("kind", "subject", "status", "device", "duration", "attempts", "created")
            },
            "id": st.column_config.NumberColumn("Job", format="#%d", width="small"),
            "progress": st.column_config.ProgressColumn(
                "Progress", format="percent", min_value=0.0, max_value=1.0
            ),
            "message": st.column_config.TextColumn("Message", width="medium"),
            "error": st.column_config.TextColumn("Error", width="large"),
        },
    )


def export_buttons(run: InfluenceRunInfo, neighbor_ids: set[str], top: int | None) -> None:
    """Download the shown results as CSV and JSON, each carrying the config that made them."""
    c1, c2, _ = st.columns([1, 1, 3])
    name = f"influence_{run.example_id}_{run.config_hash}"
    c1.download_button(
        "Download CSV",
        fmt.export_csv(run, neighbor_ids, top),
        f"{name}.csv",
        "text/csv",
        icon=":material/download:",
    )
    c2.download_button(
        "Download JSON",
        fmt.export_json(run, neighbor_ids, top),
        f"{name}.json",
        "application/json",
        icon=":material/download:",
    )
