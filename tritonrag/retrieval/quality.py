"""Retrieval quality helpers shared by perf/retrieval_quality.py and the integration test."""

from __future__ import annotations

from typing import Sequence

import numpy as np

SPLIT_SEED = 0


def split_halves(count: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(tune, held_out) question positions: a seeded random half each, both sorted."""
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[:count // 2]), np.sort(order[count // 2:])


def recall_at(ranked: Sequence[Sequence[str]], gold: Sequence[str], k: int) -> float:
    """Share of questions whose gold passage is among the first k returned."""
    return sum(g in list(r)[:k] for r, g in zip(ranked, gold)) / max(1, len(gold))
