"""Explain: do influential examples explain the model? The simulatability study (paper Sec. 6.1, Fig. 5):
launch a study (a ``simulate`` job), follow it live, and read the stored ones: the aggregate curves by
correct / incorrect predictions and each test example's curves with their min/max bands."""

from __future__ import annotations

import streamlit as st

from app import data_access as da
from app import explain_data as xd
from app import explain_ui as ui
from app import formatting as fmt
from app import render, shell

root = da.workspace_root()
state = da.workspace_state(root)
st.title("Explain")
st.caption(
    "A simulator (the base model fine-tuned on the task model's predictions) takes one SGD step on an "
    "explanation example; if the explanation carries information about the task model, the simulator's loss "
    "on the test input (target: the task model's prediction) drops. Lower is better."
)
with st.expander("Run a study", expanded=not xd.simulations(root, state.model_id)):
    config = ui.simulate_controls(da.filter_options(root), state.num_train)
if config is not None:
    st.session_state["simulate_job"] = xd.enqueue_simulate(root, config).id
shell.follow_job(root, "simulate", "simulate_job")

stored = xd.simulations(root, state.model_id)
if not stored:
    st.info("No study is stored for this model yet: run one above (or `fastif simulate --workspace W`).")
    st.stop()
chosen = st.selectbox(
    "Stored studies",
    [s.id for s in stored],
    key="simulation",
    format_func=lambda i: next(
        f"#{s.id} · {len(s.result['examples'])} test examples · {len(s.result['learning_rates'])} learning rates · "
        f"{fmt.when(s.created_at)}"
        for s in stored
        if s.id == i
    ),
)
run = next(s for s in stored if s.id == chosen)
result, secs = run.result, run.result["seconds"]
sim = result["simulator"]
c1, c2, c3, c4 = st.columns(4)
c1.metric("Simulator agrees with the task model", f"{sim['metrics'].get('agreement_with_task_model', 0):.1%}")
c2.metric("Simulator training", fmt.seconds(sim["train_seconds"]) + (" (reused)" if sim["reused"] else ""))
c3.metric("Influence", fmt.seconds(secs["influence"]))
c4.metric("Measurement", fmt.seconds(secs["measurement"]))
st.subheader("Aggregate")
ui.aggregate(result)

st.subheader("One test example")
examples = result["examples"]
pick = st.selectbox(
    "Test example",
    range(len(examples)),
    key="sim_example",
    format_func=lambda i: ui.example_label(examples[i]),
)
ex = examples[pick]
st.caption(f"Loss before any step {ex['loss_before']:.4f} (target: {ex['target']}).")
ui.curves_chart(ui.curves_frame(ex["curves"], result["learning_rates"]), ui.example_label(ex))
st.page_link(
    render.EXAMPLE_PAGE,
    label=f"Open {ex['example_id']}",
    query_params={"example": ex["example_id"]},
    icon=":material/open_in_new:",
)
with st.expander("Explanation examples"):
    st.json(ex["explanations"], expanded=False)
