"""Equal corpus rows score the same bits on every search path, whatever BLAS kernel the CPU runs.

OpenBLAS picks its sgemm kernel for the CPU it runs on; some of them (Haswell, Zen) sum an
element's products in an order that depends on where the element sits in the matrix, which once
gave two copies of a passage different scores and broke "ties go to the lower index". Each
check runs in a child process with OPENBLAS_CORETYPE set, so the kernels of those CPUs run
here too (on any x86-64 with AVX2), and with the fused kernels in Triton's CPU interpreter.
"""

import json
import os
import platform
import subprocess
import sys

import pytest

CHECK = r"""
import json, sys
import numpy as np
import torch
from tritonrag.retrieval.search import routing
from tritonrag.retrieval.search.exact import ExactSearch
from tritonrag.retrieval.search.torch_search import TorchSearch

rng = np.random.default_rng(0)
rows, dim, half = 700, 80, 300
corpus = rng.standard_normal((rows, dim)).astype(np.float32)
corpus[half:2 * half] = corpus[:half]          # row i + half is a copy of row i, at another place
queries = rng.standard_normal((32, dim)).astype(np.float32)
queries[0] = corpus[half + 7]                   # its best match sits at rows 7 and half + 7

def problems(name, indices, scores):
    out = []
    for b in range(len(indices)):
        where = {int(r): i for i, r in enumerate(indices[b])}
        for r, i in where.items():
            twin = r + half if r < half else r - half if half <= r < 2 * half else None
            if twin is None or twin not in where or twin < r:
                continue
            low, high = sorted((r, twin))
            if scores[b, where[low]] != scores[b, where[high]] or where[low] > where[high]:
                out.append(f"{name} query {b}: rows {low}/{high} at {where[low]}/{where[high]} "
                           f"scores {scores[b, where[low]]!r}/{scores[b, where[high]]!r}")
    return out

found = []
for metric in ("ip", "cosine", "l2"):
    searches = {"numpy": ExactSearch(corpus, metric),
                "torch": TorchSearch(corpus, metric, device="cpu", dtype="float32", kernel="cublas")}
    if routing.route("fused", metric, 64, "cpu", False, rows, 32).path == "fused":   # triton's interpreter
        searches["fused"] = TorchSearch(corpus, metric, device="cpu", dtype="float32", kernel="fused")
    for name, search in searches.items():
        indices, scores = search.search(queries, 64)
        found += problems(f"{name}/{metric}", indices, scores)
print(json.dumps(found))
"""


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="OpenBLAS core types of x86-64")
@pytest.mark.parametrize("core", ["Haswell", "Zen", "SkylakeX"])
def test_equal_rows_score_equal_bits_on_every_path(core):
    env = dict(os.environ, OPENBLAS_CORETYPE=core, TRITON_INTERPRET="1")
    env.pop("OPENBLAS_L2_SIZE", None)
    done = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found == [], "\n".join(found[:20])
