"""Widgets that only return parameters: no queries, no drawing of results (``*_controls()``)."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from fastif_core.config import InfluenceConfig, PrepareConfig, STestConfig, help_of
from fastif_core.store.records import ExampleFilter

CORRECTNESS = ("All", "Correct", "Incorrect")


@dataclass(frozen=True)
class FilterOptions:
    """The values each browse filter can take (distinct values in the store)."""

    datasets: list[str]
    splits: list[str]
    labels: list[str]
    predicted: list[str]
    genres: list[str]
    heuristics: list[str]
    subcases: list[str]


def _multi(label: str, options: list[str], key: str, help: str) -> list[str] | None:  # noqa: A002
    chosen = st.multiselect(label, options, key=key, placeholder="All", help=help)
    return chosen or None


def browse_filters_controls(options: FilterOptions) -> ExampleFilter:
    """Filter widgets for the examples table; an empty widget means "no constraint"."""
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        dataset = _multi("Dataset", options.datasets, "f_dataset", "MNLI, HANS or the built-in corpus")
    with c2:
        split = _multi("Split", options.splits, "f_split", "train, heldout, challenge, ...")
    with c3:
        label = _multi("Gold label", options.labels, "f_label", "the annotated label")
    with c4:
        predicted = _multi("Predicted label", options.predicted, "f_pred", "the model's prediction")
    slices = [
        ("genre", "MNLI genre", options.genres, "f_genre", "MNLI text genre"),
        (
            "heuristic",
            "HANS heuristic",
            options.heuristics,
            "f_heur",
            "lexical overlap, subsequence, constituent",
        ),
        ("subcase", "HANS subcase", options.subcases, "f_sub", "HANS subcase"),
    ]
    present = [row for row in slices if row[2]]
    cols = st.columns(4)
    chosen: dict[str, list[str] | None] = {}
    for col, (name, label_, values, key, help_) in zip(cols, present, strict=False):
        with col:
            chosen[name] = _multi(label_, values, key, help_)
    with cols[len(present)]:
        correctness = st.segmented_control("Prediction", CORRECTNESS, default="All", key="f_correct")
    search = st.text_input(
        "Search text", key="f_search", placeholder="words in the premise, hypothesis or id"
    )
    correct = {"Correct": True, "Incorrect": False}.get(correctness or "All")
    return ExampleFilter(
        dataset=dataset,
        split=split,
        label=label,
        predicted=predicted,
        correct=correct,
        genre=chosen.get("genre"),
        heuristic=chosen.get("heuristic"),
        subcase=chosen.get("subcase"),
        search=search.strip() or None,
    )


PAGE_ROWS = (50, 500, 2000)  # the Browse table's page sizes; the last is the default


def page_controls(count: int, signature: str, key: str) -> tuple[int, int]:
    """``(rows per page, page from 1)`` for ``count`` matching rows: a page-size choice and, when there is
    more than one page, a "Page" number; back to page 1 whenever ``signature`` (the filters the pages
    run through) or the page size changes."""
    c1, c2 = st.columns([1, 3])
    with c1:
        rows = int(st.selectbox("Rows per page", PAGE_ROWS, index=len(PAGE_ROWS) - 1, key=f"{key}_rows"))
    pages, page_key, seen = max(1, -(-count // rows)), f"{key}_page", f"{key}_signature"
    if st.session_state.get(seen) != (signature, rows) or st.session_state.get(page_key, 1) > pages:
        st.session_state[seen] = (signature, rows)
        st.session_state[page_key] = 1
    if pages == 1:
        return rows, 1
    with c2:
        page = st.number_input(
            f"Page (of {pages:,})",
            min_value=1,
            max_value=pages,
            step=1,
            key=page_key,
            help="pages of the matching examples in id order; type a number to jump",
        )
    return rows, int(page)


PRESET_LABELS = {
    "default": "Default (Gauss-Newton CG: the benchmark's choice)",
    "paper": "Paper (FastIF's LiSSA, J=1000, B=1)",
    "lissa_batched": "LiSSA, B=16, estimated scale",
    "gauss_newton_cg": "Gauss-Newton CG",
    "gauss_newton_direct": "Gauss-Newton, exact solve (Woodbury; the factor is kept between clicks)",
    "original": "Original code (LiSSA, B=128)",
}


def influence_controls(
    num_train: int, on_gpu: bool = False, key: str = "influence_form"
) -> InfluenceConfig | None:
    """The "Compute influence" form: an s_test preset (the engine's default pre-selected, the same as
    ``fastif influence``) whose fields pre-fill the form; the config when submitted."""
    base = InfluenceConfig()
    name = st.selectbox(
        "s_test solver",
        list(PRESET_LABELS),
        format_func=PRESET_LABELS.__getitem__,
        key=f"{key}_preset",
        help="The default solves the same damped system as the paper's LiSSA in a few conjugate-gradient "
        "steps on a positive semi-definite curvature; 'Paper' is FastIF's recursion (minutes per click on CPU).",
    )
    pre = STestConfig.preset(name)
    with st.form(f"{key}_{name}", border=True):
        c1, c2, c3, c4 = st.columns(4)
        k = c1.number_input(
            "k neighbours",
            1,
            max(1, num_train),
            min(base.k or 1, num_train),
            help=help_of(InfluenceConfig, "k"),
        )
        depth = c2.number_input("J depth", 1, 100_000, pre.depth, help=help_of(STestConfig, "depth"))
        batch = c3.number_input("B batch", 1, 4096, pre.batch_size, help=help_of(STestConfig, "batch_size"))
        repeats = c4.number_input("T repeats", 1, 64, pre.repeats, help=help_of(STestConfig, "repeats"))
        with st.expander("Advanced"):
            a1, a2, a3, a4 = st.columns(4)
            damping = a1.number_input(
                "Damping", 0.0, 0.999, pre.damping, format="%.4f", help=help_of(STestConfig, "damping")
            )
            scale = a2.number_input(
                "Scale", 0.0, 1e9, pre.scale, format="%.1f", help=help_of(STestConfig, "scale")
            )
            mu = a3.number_input("μ", 0.0, 1e9, pre.mu, format="%.2f", help=help_of(STestConfig, "mu"))
            tolerance = a4.number_input(
                "Tolerance", 0.0, 1.0, pre.tolerance, format="%.4f", help=help_of(STestConfig, "tolerance")
            )
            b1, b2 = st.columns(2)
            top = b1.number_input("Top n", 1, 1000, base.top, help=help_of(InfluenceConfig, "top"))
            full = b2.toggle("Full mode (all training examples)", False, help="score every training example")
        submitted = st.form_submit_button("Compute influence", type="primary", icon=":material/bolt:")
        if name == "paper" and not on_gpu:
            st.caption("No worker has a GPU: the paper's J=1000 takes minutes per click on a few CPU cores.")
    if not submitted:
        return None
    s_test = STestConfig.preset(
        name,
        depth=int(depth),
        batch_size=int(batch),
        repeats=int(repeats),
        damping=float(damping),
        scale=float(scale),
        mu=float(mu),
        tolerance=float(tolerance),
    )
    return InfluenceConfig(s_test=s_test, k=None if full else int(k), top=int(top))


def prepare_controls() -> PrepareConfig | None:
    """The "prepare the built-in corpus" button; the PrepareConfig to enqueue when clicked."""
    clicked = st.button("Prepare the built-in corpus", type="primary", icon=":material/play_arrow:")
    return PrepareConfig(train="demo") if clicked else None


def jobs_controls(kinds: list[str]) -> tuple[list[str] | None, list[str] | None]:
    """Status and kind filters of the jobs page (None = all)."""
    c1, c2 = st.columns(2)
    statuses = c1.multiselect(
        "Status", ["queued", "running", "done", "failed", "cancelled"], placeholder="All", key="j_status"
    )
    chosen = c2.multiselect("Kind", kinds, placeholder="All", key="j_kind")
    return statuses or None, chosen or None
