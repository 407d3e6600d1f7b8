"""The fused score + top-k Triton kernels (`tritonrag.retrieval.search.fused`), run by Triton's interpreter on CPU.

Integer-valued vectors make every product and distance exact in fp16 and fp32, so the
fused results must equal the NumPy path's exactly, ties (to the lower index) included.
The kernels are imported under TRITON_INTERPRET=1; the GPU runs of the same kernels are in perf/retrieval_bench.py.
"""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("triton was imported uninterpreted before this module", allow_module_level=True)
# Triton's own helpers (tl.zeros, ...) are interpreted only if the variable is set when
# triton is first imported; it is restored at once, so nothing else in the session sees it.
_saved = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    pytest.importorskip("triton")
    from tritonrag.retrieval.search.fused import launch as fused_topk  # noqa: E402

    fused_topk._kernels.cache_clear()
    _INTERPRETED = fused_topk._kernels().interpreted
finally:
    if _saved is None:
        os.environ.pop("TRITON_INTERPRET")
    else:
        os.environ["TRITON_INTERPRET"] = _saved

from tritonrag.retrieval.search import routing as search_path  # noqa: E402
from tritonrag.retrieval.search.exact import ExactSearch  # noqa: E402
from tritonrag.retrieval.search.torch_search import TorchSearch  # noqa: E402
from tritonrag.retrieval.search.topk import decode_keys  # noqa: E402


def decode_score_keys(keys):
    """(indices, values) of int64 keys: the first two of `topk.decode_keys`."""
    return decode_keys(keys)[:2]


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    """The interpreter reads the variable at each launch too: set it for these tests only."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_the_kernels_here_are_interpreted():
    assert _INTERPRETED


def _integer_data(rows=1100, dim=80, queries=5, seed=0):
    """dim 80: a partial last d block; 1100 rows: a partial last tile; duplicates across tiles."""
    rng = np.random.default_rng(seed)
    corpus = rng.integers(-3, 4, size=(rows, dim)).astype(np.float32)
    dup = rows * 2 // 3
    corpus[dup:dup + rows // 6] = corpus[:rows // 6]
    q = rng.integers(-3, 4, size=(queries, dim)).astype(np.float32)
    q[0] = corpus[dup + 50]  # its exact match also sits at row 50: the lower index must come first
    return corpus, q


@pytest.mark.parametrize("metric", ["ip", "l2", "l1"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_fused_keys_equal_the_numpy_path(metric, dtype):
    corpus, q = _integer_data()
    x = torch.from_numpy(corpus).to(getattr(torch, dtype))
    norms = (x.float() ** 2).sum(1) if metric == "l2" else None
    for k in (1, 10, 64):
        want_i, want_s = ExactSearch(corpus, metric).search(q, k)
        keys = fused_topk.topk_keys(torch, x, torch.from_numpy(q), k, metric, norms)
        got_i, ranked = decode_score_keys(keys.numpy())
        assert np.array_equal(got_i, want_i), (metric, dtype, k)
        if metric == "ip":
            assert np.array_equal(ranked, want_s)
        if metric == "l1":
            assert np.array_equal(-ranked, want_s)
    if metric in ("ip", "l2"):
        assert got_i[0, 0] == 50 and got_i[0, 1] == 50 + len(corpus) * 2 // 3


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("queries", [5, 12])
def test_l1_over_16_bit_words_equals_the_numpy_path(dtype, queries):
    """Batches of 5-8 and 9-16 over a 16-bit corpus with d a multiple of 32 take
    `l1_words_topk` (int64 words of 4 values); the lower row still wins a tie."""
    corpus, q = _integer_data(rows=700, dim=64, queries=queries)
    x = torch.from_numpy(corpus).to(getattr(torch, dtype))
    block = fused_topk.query_block(queries, "l1")
    assert fused_topk._words_fit(torch, x, block)
    assert not fused_topk._words_fit(torch, x[:, :40], block)  # 40 is no multiple of the d block
    for k in (1, 10, 64):
        want_i, want_s = ExactSearch(corpus, "l1").search(q, k)
        got_i, ranked = decode_score_keys(fused_topk.topk_keys(torch, x, torch.from_numpy(q), k, "l1").numpy())
        assert np.array_equal(got_i, want_i), (dtype, queries, k)
        assert np.array_equal(-ranked, want_s)
    assert got_i[0, 0] == 50 and got_i[0, 1] == 50 + len(corpus) * 2 // 3


def test_fp16_block_sums_of_l1_give_the_same_result_on_small_integers():
    corpus, q = _integer_data(rows=300, dim=64, queries=3)
    x = torch.from_numpy(corpus).half()
    want = fused_topk.topk_keys(torch, x, torch.from_numpy(q), 10, "l1", half_l1=0)
    got = fused_topk.topk_keys(torch, x, torch.from_numpy(q), 10, "l1", tiles=(64, 32, 4, 1), half_l1=16)
    assert torch.equal(want, got)


def test_merge_keeps_the_best_keys_of_each_row_over_several_rounds(monkeypatch):
    """Runs of 10 sorted keys, 8 runs a program: 100 runs a row take three rounds (100 -> 13
    -> 2 -> 1); empty slots (the lowest key) never displace a real one."""
    monkeypatch.setattr(fused_topk, "MERGE_RUNS", 8)
    rng = np.random.default_rng(3)
    keys = rng.choice(np.arange(-10**12, 10**12, 7919), size=(3, 1000), replace=False).astype(np.int64)
    keys[1, ::2] = np.iinfo(np.int64).min
    keys[2, 5:] = np.iinfo(np.int64).min  # fewer real keys than k
    runs = np.sort(keys.reshape(3, 100, 10), axis=2)[:, :, ::-1].reshape(3, 1000).copy()
    got = fused_topk.merge_runs(torch, torch.from_numpy(runs), 10).numpy()
    assert got.shape == (3, 10)
    assert np.array_equal(got, np.sort(keys, axis=1)[:, ::-1][:, :10])


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("order", ["random", "best_last"])
def test_sampled_floors_change_no_key(metric, order):
    """Floors from every 2nd, 3rd or 7th tile (and from one tile only: too few rows for k = 64)
    give the keys of the search without floors: duplicates across tiles, a partial last tile,
    two query blocks (the second partly padding), k 1 / 10 / 64. In `best_last` each query's
    best rows sit in the last tiles, so the floors are weak and the tiles make more passes."""
    corpus, q = _integer_data(rows=1100, dim=48, queries=20)
    if order == "best_last":
        corpus = corpus[np.argsort(corpus @ q[1], kind="stable")]
    x = torch.from_numpy(corpus)
    norms = (x * x).sum(1) if metric == "l2" else None
    qt = torch.from_numpy(q)
    tiles = (64, 16, 4, 1)  # 18 tiles; query blocks of 16
    for k in (1, 10, 64):
        want = fused_topk.topk_keys(torch, x, qt, k, metric, norms, tiles=tiles, floor=False)
        assert np.array_equal(decode_score_keys(want.numpy())[0], ExactSearch(corpus, metric).search(q, k)[0])
        for step in (2, 3, 7, 100):
            got = fused_topk.topk_keys(torch, x, qt, k, metric, norms, tiles=tiles, floor=True, floor_step=step)
            assert torch.equal(got, want), (metric, order, k, step)


def test_floors_leave_most_pass_slots_of_a_tile_empty():
    """What the floors are for: with them, a tile whose rows are all below every query's floor
    writes empty slots instead of k passes' keys. 1100 random rows, 18 tiles, floors from every
    3rd: most of the [queries, tiles * k] candidate slots are empty; without floors none are."""
    from tritonrag.retrieval.search.fused import triton_lang_kernels as fused_kernels

    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal((1100, 32)).astype(np.float32))
    q = torch.from_numpy(rng.standard_normal((16, 32)).astype(np.float32))
    k, n_tiles = 10, 18
    qt = q.T.contiguous()
    outs = {name: torch.empty((16, tiles * k), dtype=torch.int64) for name, tiles in
            (("sample", 6), ("floored", n_tiles), ("plain", n_tiles))}
    for name, program_tiles, step in (("sample", 6, 3), ("floored", n_tiles, 1), ("plain", n_tiles, 1)):
        out = outs[name]
        floors = fused_topk.merge_runs(torch, outs["sample"], k) if name == "floored" else None
        fused_kernels.dot_topk[(program_tiles,)](
            x, qt, out, out, 1100, 16, x.stride(0), qt.stride(0), out.stride(0), 1, step,
            floors if floors is not None else out, floors.stride(0) if floors is not None else 0, k - 1,
            DIM=32, K=k, BLOCK_N=64, BLOCK_B=16, BLOCK_D=32, NUM_STAGES=1, HAS_NORMS=False, IEEE=True,
            HAS_FLOOR=floors is not None)
    empty = {name: float((out == np.iinfo(np.int64).min).float().mean()) for name, out in outs.items()}
    assert empty["plain"] == 0.0 and empty["sample"] == 0.0
    assert empty["floored"] > 0.5, empty
    assert torch.equal(fused_topk.merge_runs(torch, outs["floored"], k), fused_topk.merge_runs(torch, outs["plain"], k))


def test_floors_are_taken_for_large_corpora_and_full_query_blocks():
    """Batches of 17 and more (query blocks of 32) over 1M rows and more: where they measured faster."""
    block = fused_topk.query_block
    assert search_path.floor_wanted("ip", search_path.FLOOR_MIN_ROWS, block(17, "ip"))
    assert search_path.floor_wanted("l2", 10 * search_path.FLOOR_MIN_ROWS, block(40, "l2"))
    assert not search_path.floor_wanted("ip", search_path.FLOOR_MIN_ROWS, block(16, "ip"))
    assert not search_path.floor_wanted("ip", search_path.FLOOR_MIN_ROWS - 1, block(32, "ip"))
    assert not search_path.floor_wanted("l1", search_path.FLOOR_MIN_ROWS, block(32, "l1"))


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2", "l1"])
def test_fused_searcher_returns_rows_and_the_metrics_scores(metric):
    """The searcher does the query work itself (cosine normalises, l2 takes |q|^2) and decodes
    on the device: its rows and scores equal the host decoding of topk_keys over prepared
    queries, converted as ExactSearch reports them (CPU: no graphs)."""
    from tritonrag.retrieval.search.fused.graphs import FusedSearcher

    corpus, q = _integer_data(rows=300, dim=32, queries=5)
    x = torch.from_numpy(corpus.astype(np.float32))
    if metric == "cosine":
        x = torch.nn.functional.normalize(x, dim=1)
    norms = (x * x).sum(dim=1) if metric == "l2" else None
    qt = torch.from_numpy(q)
    searcher = FusedSearcher(torch, x, metric, norms)
    assert not searcher.graphs
    rows, scores = searcher.search(qt, 7)
    prepared = torch.nn.functional.normalize(qt, dim=1) if metric == "cosine" else qt
    want_rows, ranked = decode_score_keys(fused_topk.topk_keys(torch, x, prepared, 7, metric, norms).numpy())
    want = {"l2": np.maximum((q * q).sum(axis=1, keepdims=True) - ranked, 0), "l1": -ranked}.get(metric, ranked)
    assert rows.dtype == np.int64 and scores.dtype == np.float32 and rows.shape == scores.shape == (5, 7)
    assert np.array_equal(rows, want_rows)
    assert np.array_equal(scores, want.astype(np.float32))
    if metric in ("l2", "l1"):
        assert (scores >= 0).all() and (np.diff(scores, axis=1) >= 0).all()  # distances, nearest first


@pytest.mark.parametrize("k", [1, 3, 10])
def test_decode_keys_on_the_device_matches_the_host_decoding(k):
    """Keys of negative, zero and positive values and rows up to 2**32 - 1, read through a
    strided view (the merge's output sliced to k)."""
    rng = np.random.default_rng(k)
    values = rng.standard_normal((4, 16)).astype(np.float32) * 100
    values[0, :3] = [0.0, -0.0, -1e-30]
    rows = rng.integers(0, 2**32 - 1, (4, 16), dtype=np.int64)
    rows[1, 0] = 2**32 - 1
    from tritonrag.retrieval.search.topk import torch_keys as score_keys

    keys = torch.sort(score_keys(torch, torch.from_numpy(values), 0), dim=1, descending=True).values
    keys = (keys & ~0xFFFFFFFF) | (0xFFFFFFFF - torch.from_numpy(rows))  # arbitrary rows in the low word
    q_norms = torch.from_numpy(rng.uniform(0, 500, (4, 1)).astype(np.float32))
    for metric in ("ip", "l2", "l1"):
        got_rows, got = fused_topk.decode_keys(torch, keys[:, :k], metric, q_norms if metric == "l2" else None)
        want_rows, ranked = decode_score_keys(keys[:, :k].numpy())
        want = {"l2": np.maximum(q_norms.numpy() - ranked, 0), "l1": -ranked}.get(metric, ranked)
        assert np.array_equal(got_rows.numpy(), want_rows)
        assert np.array_equal(got.numpy(), want.astype(np.float32))


def test_many_queries_take_several_query_blocks_and_small_tiles_still_hold_k():
    corpus, q = _integer_data(rows=400, dim=32, queries=40)
    want_i, _ = ExactSearch(corpus, "ip").search(q, 20)
    keys = fused_topk.topk_keys(torch, torch.from_numpy(corpus), torch.from_numpy(q), 20, "ip",
                                tiles=(16, 16, 4, 1))  # a 16-row tile is widened to hold k = 20
    assert np.array_equal(decode_score_keys(keys.numpy())[0], want_i)


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2", "l1"])
def test_torch_search_with_the_fused_kernel_equals_its_score_matrix_path(metric):
    corpus, q = _integer_data(rows=600)
    fused = TorchSearch(corpus, metric, device="cpu", dtype="float32", kernel="fused")
    plain = TorchSearch(corpus, metric, device="cpu", dtype="float32", kernel="cublas")
    a, b = fused.search(q, 10), plain.search(q, 10)
    assert np.array_equal(a[0], b[0])
    assert np.allclose(a[1], b[1], rtol=1e-5, atol=1e-4)


def test_kernel_choice():
    assert not search_path.wanted("auto", "ip", 10, "cpu", False)      # compiled kernels need CUDA
    assert not search_path.wanted("fused", "ip", 10, "cuda", True)     # streamed: the chunked path
    assert not search_path.wanted("fused", "ip", fused_topk.MAX_FUSED_K + 1, "cuda", False)
    assert not search_path.wanted("cublas", "l1", 10, "cuda", False)
    assert search_path.wanted("fused", "ip", 10, "cpu", False)         # the interpreter, as in these tests
    with pytest.raises(ValueError, match="search kernel"):
        search_path.wanted("fast", "ip", 10, "cuda", False)
    with pytest.raises(ValueError, match="k <="):
        fused_topk.topk_keys(torch, torch.zeros(100, 16), torch.zeros(1, 16), 65, "ip")


def test_auto_fuses_where_it_measured_faster(monkeypatch):
    """H100: L1 fused always; ip/cos/l2 fused from 1M rows or past 16 queries."""
    monkeypatch.setattr(fused_topk, "available", lambda device_type: device_type == "cuda")
    assert search_path.wanted("auto", "l1", 10, "cuda", False, rows=1000, batch=1)
    assert not search_path.wanted("auto", "ip", 10, "cuda", False, rows=500_000, batch=8)
    assert search_path.wanted("auto", "ip", 10, "cuda", False, rows=1_000_000, batch=8)
    assert search_path.wanted("auto", "ip", 10, "cuda", False, rows=500_000, batch=32)
    assert search_path.wanted("auto", "cosine", 10, "cuda", False, rows=10_000_000, batch=1)
    assert not search_path.wanted("auto", "l2", 10, "cpu", False, rows=10_000_000, batch=32)


def test_k_is_rounded_up_to_a_few_pass_counts():
    """A kernel per pass count, not per top_k: k = 4 runs 5 passes per tile, the merge keeps 4."""
    corpus, q = _integer_data(rows=300, dim=32)
    x = torch.from_numpy(corpus)
    want_i, _ = ExactSearch(corpus, "l2").search(q, 4)
    keys = fused_topk.topk_keys(torch, x, torch.from_numpy(q), 4, "l2", (x * x).sum(1))
    assert keys.shape == (5, 4) and np.array_equal(decode_score_keys(keys.numpy())[0], want_i)
    assert all(fused_topk.K_STEPS[i] < fused_topk.K_STEPS[i + 1] for i in range(len(fused_topk.K_STEPS) - 1))
    assert fused_topk.K_STEPS[-1] == fused_topk.MAX_FUSED_K


def test_kernel_key_format_mirrors_topk():
    """The Triton-language kernels keep a constexpr copy of the key format's MAX_INDEX."""
    from tritonrag.retrieval.search.fused import triton_lang_kernels as fused_kernels
    from tritonrag.retrieval.search import topk

    assert fused_kernels.MAX_INDEX.value == topk.MAX_INDEX
