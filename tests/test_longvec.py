import numpy as np
import pytest

from tritonrag.retrieval import longvec
from tritonrag.retrieval.longvec import long_distance


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cpu_long_distances_match_numpy_in_double(monkeypatch, dtype):
    monkeypatch.setattr(longvec, "CPU_SLICE", 1000)  # several slices: the chunked sums must add up
    rng = np.random.default_rng(0)
    a = rng.normal(size=12_345).astype(dtype)
    b = rng.normal(size=12_345).astype(dtype)
    x, y = a.astype(np.float64), b.astype(np.float64)
    expected = {"dot": x @ y, "l2": ((x - y) ** 2).sum(), "l1": np.abs(x - y).sum(),
                "cosine": x @ y / np.linalg.norm(x) / np.linalg.norm(y)}
    for metric, value in expected.items():
        assert long_distance(a, b, metric) == pytest.approx(value, rel=1e-12, abs=1e-12)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="unknown metric"):
        long_distance(np.zeros(3), np.zeros(3), "hamming")
    with pytest.raises(ValueError, match="1-D vectors of one length"):
        long_distance(np.zeros(3), np.zeros(4), "l2")
