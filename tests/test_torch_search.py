"""The torch search path (CUDA instances without CuPy), run here on torch's CPU device.

Integer-valued vectors make every product and distance exact in fp16 and fp32, so the
results must equal the NumPy path's exactly, ties (to the lower index) included.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tritonrag.retrieval.search.exact import ExactSearch, gpu_backend  # noqa: E402
from tritonrag.retrieval.search.topk import torch_keys as score_keys  # noqa: E402
from tritonrag.retrieval.search.torch_search import TorchSearch  # noqa: E402
from tritonrag.retrieval.search.topk import decode_keys  # noqa: E402


def decode_score_keys(keys):
    """(indices, values) of int64 keys: the first two of `topk.decode_keys`."""
    return decode_keys(keys)[:2]


def _integer_data(rows=3000, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    corpus = rng.integers(-3, 4, size=(rows, dim)).astype(np.float32)
    corpus[1000:1300] = corpus[:300]  # exact duplicates: ties across slices
    queries = rng.integers(-3, 4, size=(5, dim)).astype(np.float32)
    return corpus, queries


def test_keys_round_trip_and_order_like_the_host_top_k():
    values = torch.tensor([[1.5, -0.0, 0.0, -2.0, 1.5, float("-inf")]])
    keys = score_keys(torch, values, index_base=7)
    order = torch.argsort(keys[0], descending=True).tolist()
    assert order == [0, 4, 2, 1, 3, 5]  # equal 1.5s: lower index first; +0 above -0
    indices, decoded = decode_score_keys(keys.numpy())
    assert indices.tolist() == [[7, 8, 9, 10, 11, 12]]
    assert np.array_equal(decoded.view(np.uint32), values.numpy().view(np.uint32))


@pytest.mark.parametrize("metric", ["ip", "cosine", "l2", "l1"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_torch_search_equals_the_numpy_path(metric, dtype):
    corpus, queries = _integer_data()
    want_i, want_s = ExactSearch(corpus, metric).search(queries, 50)
    # small slices: the top-k is merged over many slices, ties cross slice borders
    search = TorchSearch(corpus, metric, device="cpu", dtype=dtype, score_bytes=4 * 5 * 16 * 97)
    got_i, got_s = search.search(queries, 50)
    if metric == "cosine":  # normalised vectors are not integers: compare as scores, same set
        assert np.allclose(got_s, want_s, atol=2e-3)
        assert np.mean([len(set(a) & set(b)) for a, b in zip(got_i, want_i)]) >= 48
    else:
        assert np.array_equal(got_i, want_i)
        assert np.array_equal(got_s, want_s)


def test_streamed_torch_search_equals_resident_and_reads_rows():
    corpus, queries = _integer_data(rows=5000)
    resident = TorchSearch(corpus, "l2", device="cpu", dtype="float16")
    streamed = TorchSearch(corpus, "l2", device="cpu", dtype="float16", budget=200_000, score_bytes=16_000)
    assert streamed.streamed and not resident.streamed
    a, b = resident.search(queries, 1024), streamed.search(queries, 1024)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.array_equal(streamed.vectors_at(np.array([4, 1])), corpus[[4, 1]])


def test_backend_choice_without_cupy(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "cupy", None)
    assert gpu_backend("cpu") is None
    expected = "torch" if torch.cuda.is_available() else None
    assert gpu_backend("cuda:0") == expected
