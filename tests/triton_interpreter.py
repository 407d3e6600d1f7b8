"""Kernel tests on CUDA tensors, or on CPU tensors in Triton's interpreter.

The interpreter must be switched on before triton is first imported, so on a host without a
GPU a test module's kernel cases run again in a child pytest with TRITON_INTERPRET=1, and the
parent never imports triton (test_fused_topk.py, later in the session, switches the
interpreter on at its own first import). A module uses `needs_kernel` on its kernel cases and
`parent_only` on one test that calls `run_module_interpreted(__file__)`.
"""

import os
import subprocess
import sys

import pytest
import torch

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED or not torch.cuda.is_available() else "cuda"
needs_kernel = pytest.mark.skipif(DEVICE == "cpu" and not INTERPRETED, reason="run by the child process below")
parent_only = pytest.mark.skipif(INTERPRETED or DEVICE == "cuda", reason="this is the parent")


def run_module_interpreted(path: str) -> None:
    """Run the test module at `path` in a child pytest under Triton's interpreter; all its kernel
    cases must pass (only the parent test is skipped there)."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", path],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and " 1 skipped" in done.stdout
