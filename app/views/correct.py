"""Correct: fix a slice the model gets wrong by gradient steps on influential examples (paper Sec. 6.3).

Choose the target slice and the candidate pool, launch (a ``correct`` job; live progress per method,
seed and iteration), then Fig. 7: accuracy (and loss) per evaluation slice against iterations, one line
per method with its min/max band over seeds; the before/after table; saving a method's final model as a
new version; the version switcher and the side-by-side comparison of two versions.
"""

from __future__ import annotations

import altair as alt
import streamlit as st

from app import correct_access as ca
from app import data_access as da
from app import shell
from fastif_core.apps.correct.config import METHODS, CorrectConfig, slice_text
from fastif_core.config import STestConfig
from fastif_core.errors import FastifError

root = da.workspace_root()
state = da.workspace_state(root)
st.title("Correct")
st.caption(
    "Pick a slice the model gets wrong; each method takes one SGD step per iteration on the examples it "
    "chooses (helpful: most negative influence on the anchors' mean loss; harmful: most positive; random; "
    "anchors: the anchors themselves). Accuracy is measured on parts of every slice the loop never saw."
)


def correct_controls(options: dict[str, list[str]]) -> CorrectConfig | None:
    """The launch form; returns the settings when submitted."""
    with st.form("correct_form"):
        c1, c2, c3 = st.columns(3)
        heuristics = options["heuristic"] or ["(none)"]
        heuristic = c1.selectbox("Target heuristic", heuristics, key="correct_heuristic")
        labels = ["(any)", *options["label"]]
        label = c2.selectbox(
            "Target label",
            labels,
            index=labels.index("non-entailment") if "non-entailment" in labels else 0,
            key="correct_label",
        )
        pool = c3.selectbox(
            "Candidates",
            ["train", "demo:augment"],
            key="correct_pool",
            help="train: the training set; demo:augment: the built-in augmentation pool (new data)",
        )
        d = CorrectConfig()
        n1, n2, n3, n4, n5, n6 = st.columns(6)
        iterations = n1.number_input("Iterations I", 1, 100, d.iterations, key="correct_iterations")
        anchors = n2.number_input("Anchors A", 1, 1000, d.anchors, key="correct_anchors")
        k = n3.number_input("Candidates k", 1, 100_000, d.k, key="correct_k")
        top = n4.number_input("Top m", 1, 1000, d.top, key="correct_top")
        seeds = n5.number_input("Seeds S", 1, 20, d.seeds, key="correct_seeds")
        lr = n6.number_input("Learning rate", 1e-7, 1.0, d.lr, format="%.0e", key="correct_lr")
        methods = st.multiselect("Methods", list(METHODS), list(METHODS), key="correct_methods")
        max_eval = st.number_input(
            "Evaluated examples per slice (0 = all)", 0, 100_000, 0, key="correct_max_eval"
        )
        if not st.form_submit_button("Run correction", icon=":material/healing:", type="primary"):
            return None
    spec = {"heuristic": heuristic} if heuristic != "(none)" else {}
    spec |= {"label": label} if label != "(any)" else {}
    return CorrectConfig(
        slice=slice_text(spec),
        pool=pool,
        iterations=int(iterations),
        anchors=int(anchors),
        k=int(k),
        top=int(top),
        seeds=int(seeds),
        lr=float(lr),
        methods=tuple(methods),
        max_eval=int(max_eval) or None,
        s_test=STestConfig.default(),
    )


def curve_chart(frame, part: str, metric: str) -> alt.LayerChart:
    """Mean over seeds as a line, min/max as a band, one colour per method."""
    data = frame[frame.part == part]
    base = alt.Chart(data).encode(x=alt.X("iteration:Q", title="iteration"), color=alt.Color("method:N"))
    band = base.mark_area(opacity=0.18).encode(y=alt.Y("min:Q", title=metric), y2="max:Q")
    line = base.mark_line(point=True).encode(
        y="mean:Q", tooltip=["method", "iteration", "mean", "min", "max"]
    )
    return (band + line).properties(title=part, height=220)


def show_run(run, result: dict | None = None) -> None:
    """A stored run, or (``result``) the comparison merged from several runs, the first of them ``run``."""
    merged = result is not None
    result = result if merged else run.result
    title = (
        f"**Runs {', '.join(f'#{i}' for i in result['run_ids'])}** · seeds {result['seed_list']}"
        if merged
        else f"**Run #{run.id}** · {result['settings']['seeds']} seed(s)"
    )
    st.markdown(
        f"{title} · target `{result['target']}` · pool `{result['pool']['source']}` "
        f"({result['pool']['size']:,}) · {result['seconds']['total']:.0f} s on {result['device']}"
    )
    st.caption("Evaluated examples: " + ", ".join(f"{k} n={v}" for k, v in result["sizes"].items()))
    metric = st.radio("Curves", ["accuracy", "loss"], horizontal=True, key="correct_metric")
    frame = ca.curves_frame(result, metric)
    parts = list(result["before"])
    for row in range(0, len(parts), 2):
        cols = st.columns(2)
        for col, part in zip(cols, parts[row : row + 2], strict=False):
            col.altair_chart(curve_chart(frame, part, metric), use_container_width=True)
    st.subheader("Before and after")
    st.dataframe(
        ca.before_after_frame(result),
        hide_index=True,
        use_container_width=True,
        column_config={
            c: st.column_config.NumberColumn(format="%.3f")
            for c in ("before", "after", "min", "max", "change")
        },
    )
    with st.form("save_form"):
        method = st.selectbox(
            f"Save a method's final model (seed {run.result['settings']['seed']} of run "
            f"#{run.id}) as a new model version",
            list(result["methods"]),
            key="save_method",
        )
        if st.form_submit_button("Save as new model version", icon=":material/save:"):
            from dataclasses import replace

            job = ca.enqueue_correct(root, replace(ca.config_of(run), save=method))
            st.session_state["correct_job"] = job.id
            st.rerun()


def show_versions() -> None:
    st.subheader("Model versions")
    listed = ca.model_versions(root)
    st.dataframe(
        [
            {k: v[k] for k in ("id", "name", "active", "method", "parent_model_id", "created_at")}
            for v in listed
        ],
        hide_index=True,
        use_container_width=True,
    )
    ids = [v["id"] for v in listed]
    with st.form("activate_form"):
        chosen = st.selectbox(
            "Serve version",
            ids,
            index=ids.index(state.model_id) if state.model_id in ids else 0,
            key="activate_model",
        )
        if (
            st.form_submit_button("Switch the active model", icon=":material/swap_horiz:")
            and chosen != state.model_id
        ):
            st.session_state["activate_job"] = ca.enqueue_activate(root, int(chosen)).id
    if st.session_state.get("activate_job"):
        shell.job_progress(root, st.session_state["activate_job"])
    if len(ids) > 1:
        a, b = st.columns(2)
        left = a.selectbox("Compare version A", ids, index=0, key="compare_a")
        right = b.selectbox("with version B", ids, index=len(ids) - 1, key="compare_b")
        if left != right:
            cmp = ca.comparison(root, int(left), int(right))
            st.markdown(f"{cmp['changed']} predictions changed: {cmp['fixed']} fixed, {cmp['broken']} broken")
            for column in ("heuristic", "dataset"):
                if cmp["slices"].get(column):
                    st.dataframe(cmp["slices"][column], hide_index=True, use_container_width=True)
            st.dataframe(cmp["examples"], hide_index=True, use_container_width=True)


config = correct_controls(ca.slice_options(root))
if config is not None:
    try:
        st.session_state["correct_job"] = ca.enqueue_correct(root, config).id
    except FastifError as exc:  # a bad setting is shown as one line, the page keeps working
        st.error(str(exc))
shell.follow_job(root, "correct", "correct_job")
with st.expander("Import runs made in another workspace"):
    paths = st.text_area(
        "Run files, one path per line",
        key="correct_import_paths",
        help="the JSON `fastif correct --json` printed in a workspace prepared with the same model, "
        "settings and data (another machine or day); each run is matched to this workspace's "
        "model by its model_hash",
    )
    if st.button("Import", key="correct_import"):
        try:
            done = ca.import_runs(root, [p.strip() for p in paths.splitlines() if p.strip()])
            st.success(
                "; ".join(
                    f"{d['file']}: {'imported as' if d['imported'] else 'already stored as'} run "
                    f"#{d['run_id']}"
                    for d in done
                )
                or "no files given"
            )
        except FastifError as exc:  # a bad file is one line and nothing is stored
            st.error(str(exc))
stored = ca.runs(root)
merge = bool(stored) and st.toggle(
    "Merge the seeds of one comparison",
    key="correct_merge",
    help="runs that differ only in --seed/--seeds (same split, settings and model), e.g. one seed per machine",
)
if merge:
    merged = ca.comparisons(root)
    at = st.selectbox(
        "Stored comparisons",
        range(len(merged)),
        key="correct_comparison",
        format_func=lambda i: (
            f"runs {', '.join(f'#{r}' for r in merged[i]['run_ids'])} "
            f"{merged[i]['target']} · {merged[i]['kind']} · seeds {merged[i]['seed_list']}"
        ),
    )
    first = merged[at]["run_ids"][0]
    show_run(next((r for r in stored if r.id == first), None) or ca.run(root, first), merged[at])
elif stored:
    chosen = st.selectbox(
        "Stored runs",
        [r.id for r in stored],
        key="correct_run",
        format_func=lambda i: next(
            f"#{r.id} {r.result['target']} · {r.kind} · {r.created_at:%Y-%m-%d %H:%M}"
            for r in stored
            if r.id == i
        ),
    )
    show_run(next(r for r in stored if r.id == chosen))
else:
    st.info(
        "No correction runs are stored for the served model yet: choose a slice and press “Run correction”."
    )
show_versions()
