"""The GPU search paths against an exact host reference. Runs where CUDA is (`make test-gpu`).

Integer-valued data keeps every score exact in fp16, bf16 and fp32 with fp32 accumulation, so
each path must give the reference's rows in the reference's order, ties to the lower row
included; cosine, whose normalised values are not exact, is compared on well-separated scores.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
cupy = pytest.importorskip("cupy")

from tritonrag.retrieval.search import routing  # noqa: E402
from tritonrag.retrieval.search.fused import launch as fused_topk  # noqa: E402
from tritonrag.retrieval.search.fused.graphs import FusedSearcher  # noqa: E402
from tritonrag.retrieval.longvec import long_distance  # noqa: E402
from tritonrag.retrieval.search.exact import ExactSearch  # noqa: E402
from tritonrag.retrieval.search.torch_search import TorchSearch  # noqa: E402

pytestmark = pytest.mark.gpu

ROWS, DIM = 50_000, 96


def integer_data(rows=ROWS, dim=DIM, queries=40, seed=0):
    rng = np.random.default_rng(seed)
    corpus = rng.integers(-3, 4, size=(rows, dim)).astype(np.float32)
    q = rng.integers(-3, 4, size=(queries, dim)).astype(np.float32)
    return corpus, q


@pytest.fixture(scope="module")
def data():
    corpus, q = integer_data()
    return corpus, q, {m: ExactSearch(corpus, m) for m in ("ip", "l2", "l1")}


def gpu_search(backend, corpus, metric, dtype="float16", kernel="auto", budget=None):
    if backend == "cupy":
        search = ExactSearch(corpus, metric, device="cuda:0", dtype=dtype, kernel=kernel, gpu_memory_budget=budget)
        assert search.backend == "cupy"
        return search
    return TorchSearch(corpus, metric, device="cuda:0", dtype=dtype, kernel=kernel, budget=budget)


@pytest.mark.parametrize("backend", ["cupy", "torch"])
@pytest.mark.parametrize("kernel", ["fused", "cublas"])
@pytest.mark.parametrize("metric", ["ip", "l2", "l1"])
def test_gpu_paths_equal_the_exact_reference(data, backend, kernel, metric):
    corpus, q, reference = data
    search = gpu_search(backend, corpus, metric, kernel=kernel)
    for batch in (1, 8, 40):
        for k in (1, 10, 64, 100):
            want_i, want_s = reference[metric].search(q[:batch], k)
            got_i, got_s = search.search(q[:batch], k)
            assert np.array_equal(got_i, want_i), (backend, kernel, metric, batch, k)
            assert np.array_equal(got_s, want_s), (backend, kernel, metric, batch, k)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("kernel", ["fused", "cublas"])
def test_other_storage_types_equal_the_reference(data, dtype, kernel):
    corpus, q, reference = data
    search = gpu_search("cupy", corpus, "ip", dtype=dtype, kernel=kernel)
    want_i, want_s = reference["ip"].search(q, 10)
    got_i, got_s = search.search(q, 10)
    assert np.array_equal(got_i, want_i) and np.array_equal(got_s, want_s)


@pytest.mark.parametrize("backend", ["cupy", "torch"])
@pytest.mark.parametrize("kernel", ["fused", "cublas"])
def test_cosine_order_equals_the_fp64_reference(backend, kernel):
    rng = np.random.default_rng(1)
    corpus = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    q = rng.standard_normal((16, DIM)).astype(np.float32)
    unit = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    sims = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float64) @ unit.astype(np.float64).T
    want = np.argsort(-sims, axis=1, kind="stable")[:, :11]
    got_i, got_s = gpu_search(backend, corpus, "cosine", dtype="float32", kernel=kernel).search(q, 10)
    for b in range(len(q)):
        gaps = -np.diff(sims[b, want[b]])
        if gaps.min() > 1e-5:  # fp32 scores cannot swap rows further apart than this
            assert np.array_equal(got_i[b], want[b, :10]), b
        assert np.allclose(got_s[b], sims[b, got_i[b]], atol=1e-5)


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_floors_change_no_key_at_a_million_rows(metric):
    corpus, q = integer_data(rows=1_000_000, dim=64, queries=32, seed=2)
    x = torch.from_numpy(corpus).to("cuda", torch.float16)
    if metric == "cosine":
        x = torch.nn.functional.normalize(x.float(), dim=1).half()
    queries = torch.from_numpy(q).cuda()
    if metric == "cosine":
        queries = torch.nn.functional.normalize(queries, dim=1)
    norms = (x.float() ** 2).sum(1) if metric == "l2" else None
    assert routing.floor_wanted(metric, len(corpus), fused_topk.query_block(32, metric))
    with_floor = fused_topk.topk_keys(torch, x, queries, 10, metric, norms, floor=True)
    without = fused_topk.topk_keys(torch, x, queries, 10, metric, norms, floor=False)
    assert torch.equal(with_floor, without), metric
    if metric == "ip":  # integer scores are exact: the floored search is the exact top 10
        values = queries @ x.float().T
        rows = torch.arange(len(corpus), device="cuda", dtype=torch.float64)
        best = torch.argsort(-(values.double() * len(corpus) * 2 - rows), dim=1)[:, :10]  # ties: lower row
        got_i, _ = ExactSearch(corpus, "ip", device="cuda:0", kernel="fused").search(q, 10)
        assert np.array_equal(got_i, best.cpu().numpy())


@pytest.mark.parametrize("metric", ["ip", "l2", "l1"])
def test_streamed_corpus_equals_the_resident_one(data, metric):
    corpus, q, reference = data
    resident = gpu_search("cupy", corpus, metric, kernel="cublas")
    streamed = gpu_search("cupy", corpus, metric, kernel="cublas", budget=26 << 20)  # ~3 MB of chunks
    assert streamed.streamed and not resident.streamed
    for k in (10, 200):
        a, b = resident.search(q, k), streamed.search(q, k)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        assert np.array_equal(a[0], reference[metric].search(q, k)[0])


def test_graph_replays_equal_eager_searches(data):
    corpus, q, _ = data
    x = torch.from_numpy(corpus).to("cuda", torch.float16)
    graphs = FusedSearcher(torch, x, "ip")
    eager = FusedSearcher(torch, x, "ip", graphs=False)
    assert graphs.graphs
    for seed in range(3):  # the same (batch, k) shape replays one graph with new queries
        queries = torch.from_numpy(np.roll(q[:8], seed, axis=1).copy()).cuda()
        a, b = graphs.search(queries, 10), eager.search(queries, 10)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("kernel", ["fused", "cublas"])
def test_device_arrays_are_searched_in_place(data, kernel):
    corpus, q, reference = data
    search = gpu_search("cupy", corpus, "ip", kernel=kernel)
    want = reference["ip"].search(q[:8], 10)
    for queries in (torch.from_numpy(q[:8]).cuda(), cupy.asarray(q[:8])):  # DLPack / CUDA array interface
        got = search.search(queries, 10)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


@pytest.mark.parametrize("backend", ["cupy", "torch"])
@pytest.mark.parametrize("kernel", ["fused", "cublas"])
def test_equal_rows_score_equal_bits_wherever_they_sit(backend, kernel):
    """Copies of non-integer rows across tiles and score slices: same score, lower row first."""
    rng = np.random.default_rng(3)
    rows, half = 300_000, 100_000
    corpus = rng.standard_normal((rows, DIM)).astype(np.float32)
    corpus[2 * half:] = corpus[:half]
    q = rng.standard_normal((32, DIM)).astype(np.float32)
    q[:8] = corpus[rng.integers(0, half, 8)]
    for metric in ("ip", "cosine", "l2"):
        indices, scores = gpu_search(backend, corpus, metric, kernel=kernel).search(q, 64)
        for b in range(len(q)):
            where = {int(r): i for i, r in enumerate(indices[b])}
            for r, i in where.items():
                twin = r + 2 * half
                if r < half and twin in where:
                    assert scores[b, i] == scores[b, where[twin]] and i < where[twin], (metric, b, r)


@pytest.mark.parametrize("metric", ["dot", "l2", "l1", "cosine"])
def test_long_vectors_on_the_gpu_equal_the_host(metric):
    rng = np.random.default_rng(4)
    a = rng.standard_normal(3_000_000).astype(np.float32)
    b = rng.standard_normal(3_000_000).astype(np.float32)
    want = long_distance(a, b, metric)
    assert long_distance(a, b, metric, device="cuda:0") == pytest.approx(want, rel=1e-4)
    streamed = long_distance(a, b, metric, device="cuda:0", budget=8 << 20, chunk=1 << 18)
    assert streamed == pytest.approx(want, rel=1e-4)
