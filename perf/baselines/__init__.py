"""Baselines the Triton stack is measured against (perf/ablate.py starts them)."""
