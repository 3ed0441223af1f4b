"""parallel: two gloo ranks give the serial s_test and scores (1e-5 relative); the group lives across
queries, reports a rank's error on rank 0 and keeps serving; device strings are validated."""

from __future__ import annotations

import pytest
import torch
from factories import make_tiny_bert, make_tiny_examples

from fastif_core.config import InfluenceConfig, STestConfig
from fastif_core.engine import influence, scoring, solvers
from fastif_core.engine.objective import classifier_objective
from fastif_core.errors import ConfigError, JobError, LissaDivergenceError, QueryCancelled
from fastif_core.parallel.group import ParallelContext, RankState, parse_devices


def load_tiny(device: str, rank: int = 0, seed: int = 0, n_train: int = 12) -> RankState:
    """Tiny BERT + training examples, rebuilt identically on every rank."""
    model = make_tiny_bert(seed).to(device)
    return RankState(classifier_objective(model, weight_decay=0.01), make_tiny_examples(n_train, seed=seed))


def query_batch():
    return make_tiny_examples(1, seed=7).collate([0])


def serial(cfg: InfluenceConfig, candidates: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth in this process without torch.distributed: (s_test (P,), values (k,))."""
    state = load_tiny("cpu")
    obj, train = state.objective, state.train
    v = influence.test_gradient(obj, query_batch())
    s_test = solvers.solve(obj, v, train, cfg.s_test).s_test
    values = scoring.score_candidates(obj, s_test, train, candidates, cfg.score_batch_size, "cpu")
    return s_test, values


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def group():
    ctx = ParallelContext.start("cpu:2", timeout_s=120)
    ctx.load("tiny", load_tiny, seed=0)
    yield ctx
    ctx.close()


S_TEST_CASES = {
    "lissa": STestConfig(depth=25, batch_size=2, repeats=3, scale=50.0),
    "lissa_estimated_scale": STestConfig(depth=25, batch_size=2, repeats=3, scale=0.0),  # same on every rank
    "gn_cg": STestConfig(
        solver="cg", curvature="gauss_newton", depth=30, batch_size=4, repeats=3, mu=0.5, tolerance=1e-6
    ),
}


@pytest.mark.parametrize("case", list(S_TEST_CASES))
def test_two_ranks_equal_serial(group, case):
    cfg = InfluenceConfig(s_test=S_TEST_CASES[case], k=None, score_batch_size=3)
    candidates = [11, 0, 5, 3, 8, 2, 9]  # an arbitrary order: results come back in this order
    result = group.influence("tiny", query_batch(), candidates, cfg)
    s_test, values = serial(cfg, candidates)
    assert result.s_test_stats["ranks"] == 2
    assert result.s_test_stats["repetitions"] == 3  # every repetition ran exactly once across the ranks
    assert result.indices.tolist() == candidates
    assert rel_err(result.s_test, s_test) < 1e-5
    assert rel_err(result.values, values) < 1e-5
    # element-wise: each score is g_i · s_test in float32, s_test summed across ranks in another order, so
    # a score's error is float32 rounding of the largest terms (~1e-6 of the largest score), not of itself
    torch.testing.assert_close(
        result.values.double(), values.double(), rtol=1e-5, atol=1e-5 * float(values.abs().max())
    )


def test_all_candidates_and_progress(group):
    cfg = InfluenceConfig(s_test=STestConfig(depth=10, batch_size=1, repeats=2, scale=50.0), k=None)
    seen: list[tuple[float, str]] = []
    result = group.influence("tiny", query_batch(), None, cfg, progress=lambda f, m: seen.append((f, m)))
    _, values = serial(cfg, list(range(12)))
    assert result.indices.tolist() == list(range(12))
    assert rel_err(result.values, values) < 1e-5
    assert seen and all(0.0 <= f <= 1.0 for f, _ in seen)
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)


def test_rank_error_reaches_rank0_and_group_keeps_serving(group):
    bad = InfluenceConfig(
        s_test=STestConfig(depth=50, batch_size=1, repeats=2, scale=1e-6, max_norm=1e3), k=None
    )
    with pytest.raises(LissaDivergenceError, match="diverged"):
        group.influence("tiny", query_batch(), [0, 1], bad)
    good = InfluenceConfig(s_test=STestConfig(depth=5, batch_size=1, repeats=2, scale=50.0), k=None)
    with pytest.raises(QueryCancelled):
        group.influence("tiny", query_batch(), [0, 1], good, should_stop=lambda: True)
    assert group.influence("tiny", query_batch(), [0, 1, 2], good).values.shape == (3,)
    assert group.alive()


def load_follower_fails(device: str, rank: int) -> RankState:
    """Rank 0 loads fine; rank 1 cannot (a model path missing on the follower's machine)."""
    if rank == 1:
        raise FileNotFoundError(f"rank {rank}: no model at /nonexistent/model")
    return load_tiny(device, rank)


def load_follower_diverges(device: str, rank: int) -> RankState:
    """The same tiny model, but rank 1's objective has weight decay 1e4: H ⪰ 2e4·I, far above scale=50,
    so only rank 1's LiSSA repetitions diverge."""
    state = load_tiny(device, rank)
    if rank == 1:
        return RankState(classifier_objective(state.objective.model, weight_decay=1e4), state.train)
    return state


def test_follower_only_failures_reach_rank0(group):
    with pytest.raises(JobError, match=r"rank 1 failed: FileNotFoundError: rank 1: no model at /nonexistent"):
        group.load("flaky", load_follower_fails)
    cfg = InfluenceConfig(s_test=STestConfig(depth=20, batch_size=1, repeats=2, scale=50.0), k=None)
    assert group.influence("tiny", query_batch(), [0, 1], cfg).values.shape == (2,)  # no rank changed state
    with pytest.raises(JobError, match="'flaky' is not loaded"):
        group.influence("flaky", query_batch(), [0], cfg)

    group.load("diverging", load_follower_diverges)
    # rank 0 runs repetition 0 of the same query without error (as here, serially); rank 1 runs repetition 1
    state = load_tiny("cpu")
    v = state.objective.grad(query_batch())
    solvers.solve_repetitions(state.objective, v, state.train, cfg.s_test, [0], "cpu")
    with pytest.raises(LissaDivergenceError, match="repetition 1"):
        group.influence("diverging", query_batch(), [0, 1], cfg)
    assert group.alive()
    group.load("tiny", load_tiny, seed=0)  # the module's other tests use it
    assert group.influence("tiny", query_batch(), [0, 1], cfg).values.shape == (2,)


def test_load_error_names_loader(group):
    with pytest.raises(
        ConfigError, match="loader='fastif_core.no_such_module:load' is invalid: give a module-level"
    ):
        group.load("other", "fastif_core.no_such_module:load")  # a name is not a loader: no import by string
    assert group.influence("tiny", query_batch(), [0], InfluenceConfig(s_test=STestConfig(depth=2), k=None))


def test_single_rank_runs_without_torch_distributed():
    with ParallelContext.start("cpu:1") as ctx:
        assert not ctx.distributed
        ctx.load("tiny", load_tiny, seed=0)
        cfg = InfluenceConfig(s_test=STestConfig(depth=8, batch_size=2, repeats=2, scale=50.0), k=None)
        result = ctx.influence("tiny", query_batch(), [1, 4], cfg)
    s_test, values = serial(cfg, [1, 4])
    assert rel_err(result.s_test, s_test) < 1e-6
    assert rel_err(result.values, values) < 1e-6


def test_parse_devices():
    assert parse_devices("cpu:3").devices == ("cpu",) * 3
    assert parse_devices("cpu").world_size == 1
    assert parse_devices("auto").world_size >= 1
    assert str(parse_devices("cpu:2")) == "cpu:2"
    for bad in ("cpu:0", "gpu", "cuda:0,cpu", "cpu:x"):
        with pytest.raises(ConfigError, match="devices="):
            parse_devices(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="not visible"):
            parse_devices("cuda:0")
