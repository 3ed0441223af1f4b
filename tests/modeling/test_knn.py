"""FAISS kNN index: exact search equals brute force, approximate search, save/load, errors, GPU."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from fastif_core.config import KnnConfig
from fastif_core.errors import ConfigError, WorkspaceError
from fastif_core.modeling.knn import KnnIndex, faiss_gpu_count


def _features(n: int = 500, d: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))  # (N, d)


def _brute_force(x: torch.Tensor, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    d2 = torch.cdist(q.double(), x.double()) ** 2  # (Q, N) squared L2
    dist, pos = torch.topk(d2, k, dim=1, largest=False, sorted=True)
    return dist, pos


# Squared L2 distances of ~30 in float32 (FAISS computes |x|² + |q|² - 2x·q, with BLAS above a query-count
# threshold) carry a rounding error of ~1e-5; two rows whose distances agree that closely are a tie.
TIE = 1e-4


def assert_nearest(x: torch.Tensor, q: torch.Tensor, dist: torch.Tensor, pos: torch.Tensor) -> None:
    """``pos`` (Q, k) are the k nearest rows of ``x`` to each query, nearest first, and ``dist`` their
    squared distances: the float64 distances of the returned rows equal the brute-force k smallest (so two
    rows tied to float32 rounding may come in either order; a wrong or missing row cannot pass)."""
    k = pos.shape[1]
    ref_dist, _ = _brute_force(x, q, k)
    got = ((q.double()[:, None, :] - x.double()[pos]) ** 2).sum(-1)  # (Q, k)
    assert all(len(set(row)) == k for row in pos.tolist())  # k distinct rows
    torch.testing.assert_close(got, ref_dist, rtol=0, atol=TIE)
    torch.testing.assert_close(dist.double(), ref_dist, rtol=1e-5, atol=TIE)  # squared L2, as FAISS returns


def test_each_training_example_is_its_own_nearest_neighbour():
    x = _features()
    index = KnnIndex.build(x, KnnConfig(use_gpu=False))
    dist, pos = index.search_by_position(range(len(x)), 1)
    assert torch.equal(pos[:, 0], torch.arange(len(x)))
    assert torch.all(dist[:, 0].abs() < 1e-4)


def test_exact_index_matches_brute_force_cdist_ranking():
    x, q = _features(500), _features(40, seed=1)
    index = KnnIndex.build(x, KnnConfig(use_gpu=False))
    dist, pos = index.search(q, 10)
    assert dist.shape == (40, 10) and pos.dtype == torch.long
    assert_nearest(x, q, dist, pos)


def test_batched_queries_equal_one_by_one(monkeypatch):
    import fastif_core.modeling.knn as knn

    x, q = _features(300), _features(25, seed=2)
    index = KnnIndex.build(x, KnnConfig(use_gpu=False))
    whole = index.search(q, 5)
    monkeypatch.setattr(knn, "QUERY_BATCH", 4)  # 7 FAISS calls instead of 1
    batched = index.search(q, 5)
    # one 25-query FAISS call and 7 small ones take different code paths (BLAS above a query-count
    # threshold): both find the exact neighbours, their distances equal to float32 rounding
    assert_nearest(x, q, *whole)
    assert_nearest(x, q, *batched)
    torch.testing.assert_close(batched[0], whole[0], rtol=1e-5, atol=TIE)


def test_ivf_factory_string_sets_nprobe_and_probing_all_cells_is_exact():
    x, q = _features(2000), _features(30, seed=3)
    approx = KnnIndex.build(x, KnnConfig(index="IVF8,Flat", nprobe=8, use_gpu=False))
    assert faiss.extract_index_ivf(approx.cpu_index).nprobe == 8
    assert_nearest(x, q, *approx.search(q, 5))


def test_ivf_with_k_beyond_the_probed_cells_never_returns_minus_one(caplog):
    """64 cells of ~31 vectors, one probed, k=200: FAISS pads with -1 (which would silently mean the last
    training row); those queries must be answered exactly instead, and the shortfall reported."""
    x, q = _features(2000), _features(30, seed=3)
    index = KnnIndex.build(x, KnnConfig(index="IVF64,Flat", nprobe=1, use_gpu=False))
    raw = index.cpu_index.search(q.numpy(), 200)[1]
    assert (raw < 0).any()  # the situation under test really occurs
    with caplog.at_level("WARNING", logger="fastif_core.modeling.knn"):
        dist, pos = index.search(q, 200)
    assert ((pos >= 0) & (pos < 2000)).all()
    assert all(len(set(row)) == 200 for row in pos.tolist())
    short = torch.from_numpy((raw < 0).any(axis=1))
    assert index.last_fallback == int(short.sum()) > 0
    assert_nearest(x, q[short], dist[short], pos[short])  # exact answers for the shortfall (near-ties here)
    assert "exact search" in caplog.text and "nprobe=1" in caplog.text
    full = ~short
    assert torch.equal(
        pos[full], torch.from_numpy(raw[full.numpy()])
    )  # the others are left as FAISS found them (the same FAISS call on the same 30 queries: bit-identical)


def test_prepare_keeps_nprobe_and_gpu_settings(tmp_path):
    """A workspace prepared with an IVF index and nprobe=3 searches with nprobe=3 after loading."""
    from factories import save_tiny_checkpoint, tiny_prepare_config

    from fastif_core.workspace.layout import LoadedWorkspace
    from fastif_core.workspace.prepare import prepare

    model = save_tiny_checkpoint(tmp_path / "base")
    cfg = tiny_prepare_config(model, demo_size=40, knn=KnnConfig(index="IVF4,Flat", nprobe=3, use_gpu=False))
    prepare(tmp_path / "ws", cfg, show_progress=False)
    loaded = LoadedWorkspace.load(tmp_path / "ws")
    assert loaded.index.cfg.nprobe == 3 and loaded.index.cfg.use_gpu is False
    assert faiss.extract_index_ivf(loaded.index.cpu_index).nprobe == 3
    positions, _ = loaded.nearest(loaded.train_ids[0], 36)
    assert len(set(positions)) == 36 and min(positions) >= 0


@pytest.mark.parametrize("factory", ["IVF4,SQ8", "PCA16,IVF4,Flat", "HNSW16"])
def test_approximate_indexes_still_find_each_row_first(factory):
    x = _features(2000, d=32)
    index = KnnIndex.build(x, KnnConfig(index=factory, nprobe=4, use_gpu=False))
    pos = index.search_by_position(range(200), 1)[1]
    assert (pos[:, 0] == torch.arange(200)).float().mean() > 0.9


def test_exclude_self_drops_the_query_row():
    x = _features(200)
    index = KnnIndex.build(x, KnnConfig(use_gpu=False))
    with_self = index.search_by_position([3, 7], 4)
    without = index.search_by_position([3, 7], 3, exclude_self=True)
    assert torch.equal(without[1], with_self[1][:, 1:])
    assert not (without[1] == torch.tensor([[3], [7]])).any()


def test_save_load_round_trip(tmp_path):
    x, q = _features(2000), _features(20, seed=4)
    index = KnnIndex.build(x, KnnConfig(index="IVF8,Flat", nprobe=2, use_gpu=False))
    path = index.save(tmp_path / "index.faiss")
    loaded = KnnIndex.load(path, KnnConfig(nprobe=2, use_gpu=False))
    assert loaded.ntotal == 2000 and loaded.dim == 16
    for a, b in zip(index.search(q, 7), loaded.search(q, 7), strict=True):
        assert torch.equal(a, b)  # the same index bytes searched with the same call: bit-identical
    wider = KnnIndex.load(path, KnnConfig(nprobe=8, use_gpu=False))
    assert faiss.extract_index_ivf(wider.cpu_index).nprobe == 8


def test_k_larger_than_n_names_k_and_n():
    index = KnnIndex.build(_features(50), KnnConfig(use_gpu=False))
    with pytest.raises(ConfigError, match=r"k=51.*N=50"):
        index.search(_features(2), 51)
    with pytest.raises(ConfigError, match=r"k=51.*N=50"):
        index.search_by_position([0], 50, exclude_self=True)


def test_bad_inputs_give_clear_errors(tmp_path):
    index = KnnIndex.build(_features(50), KnnConfig(use_gpu=False))
    with pytest.raises(ConfigError, match=r"\(N, 16\)"):
        index.search(torch.zeros(3, 8), 1)
    with pytest.raises(ConfigError, match="positions must lie in 0..49"):
        index.search_by_position([50], 1)
    with pytest.raises(ConfigError, match="IVF64"):
        KnnIndex.build(_features(20), KnnConfig(index="IVF64,Flat", use_gpu=False))
    with pytest.raises(WorkspaceError, match="does not exist"):
        KnnIndex.load(tmp_path / "missing.faiss")


def test_numpy_input_and_float64_are_accepted():
    x = _features(100).double().numpy()
    index = KnnIndex.build(x, KnnConfig(use_gpu=False))
    dist, pos = index.search(np.asarray(x[:3]), 2)
    assert pos[:, 0].tolist() == [0, 1, 2] and dist.dtype == torch.float32


@pytest.mark.gpu
def test_gpu_index_matches_cpu_index():
    if faiss_gpu_count() == 0:
        pytest.skip("faiss has no GPU support here (faiss-cpu build or no visible GPU)")
    x, q = _features(5000, d=64), _features(100, seed=5, d=64)
    cpu = KnnIndex.build(x, KnnConfig(use_gpu=False))
    gpu = KnnIndex.build(x, KnnConfig(use_gpu=True))
    assert gpu.on_gpu and not cpu.on_gpu
    assert_nearest(x, q, *cpu.search(q, 10))
    assert_nearest(x, q, *gpu.search(q, 10))  # another device's rounding: the same rows up to near-ties
    dist, pos = gpu.search(q, 3000)  # k > GPU limit
    assert_nearest(x, q, dist[:, :10], pos[:, :10])


def test_neighbour_index_auto_is_exact_below_the_threshold_and_ivf_above():
    from fastif_core.modeling.knn import (
        EXACT_NEIGHBOURS_MAX,
        NEIGHBOUR_NPROBE,
        auto_nlist,
        neighbour_index_config,
    )

    ws = KnnConfig(use_gpu=False)
    assert neighbour_index_config("auto", EXACT_NEIGHBOURS_MAX - 1, ws) is None
    assert neighbour_index_config("exact", 10 * EXACT_NEIGHBOURS_MAX, ws) is None
    big = neighbour_index_config("auto", 396_000, ws)
    assert big == KnnConfig(index="IVF2517,Flat", nprobe=NEIGHBOUR_NPROBE, use_gpu=False)
    assert auto_nlist(396_000) == 2517 and auto_nlist(100) == 2  # 4·√N, at least 39 rows per cell
    assert neighbour_index_config("IVF8,Flat", 50, ws).index == "IVF8,Flat"


def test_neighbour_lists_in_chunks_and_through_an_all_cells_ivf_equal_exact_ones(monkeypatch):
    """The neighbours phase: chunked searches give one search's lists; an IVF probing all its cells gives
    the exact lists (a training example is never its own neighbour)."""
    import fastif_core.workspace.prepare as P

    x = _features(300)
    examples = [f"e{i}" for i in range(len(x))]
    flat = KnnIndex.build(x[:250], KnnConfig(use_gpu=False))  # 250 training rows, 50 others
    whole = P.neighbors_of(flat, x, examples, 250, 5)
    monkeypatch.setattr(P, "NEIGHBOUR_QUERIES", 7)
    seen: list[float] = []
    chunked = P.neighbors_of(flat, x, examples, 250, 5, lambda f, m: seen.append(f))
    assert chunked.keys() == whole.keys() and len(whole) == 300
    for key in whole:  # other batch sizes take other BLAS paths: distances to a tolerance, not bits
        assert len(whole[key]) == 5 and key not in [t for t, _ in whole[key]]  # never itself
        _same_lists(chunked[key], whole[key])
    assert seen[-1] == 1.0 and len(seen) == -(-300 // 7)
    ivf = KnnIndex.build(x[:250], KnnConfig(index="IVF4,Flat", nprobe=4, use_gpu=False))
    approx = P.neighbors_of(ivf, x, examples, 250, 5)
    for key in whole:
        _same_lists(approx[key], whole[key])


def _same_lists(a: list[tuple[str, float]], b: list[tuple[str, float]]) -> None:
    """The same neighbours (as a set: rows tied to float32 rounding may swap) at the same distances."""
    assert {t for t, _ in a} == {t for t, _ in b}
    torch.testing.assert_close(
        torch.tensor([d for _, d in a]), torch.tensor([d for _, d in b]), rtol=1e-5, atol=TIE
    )
