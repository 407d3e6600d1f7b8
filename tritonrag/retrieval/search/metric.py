"""The vector metrics of the exact search, in one place.

Scores are similarities ("higher is better") for ``ip`` and ``cosine`` and distances ("lower is
better") for ``l2`` (squared) and ``l1``. Every search path ranks by one "larger is better"
value: the similarity for ip/cosine, ``2 q.x - |x|^2`` for l2 (the order of ``-|q - x|^2``
without the per-query constant ``|q|^2``) and ``-|q - x|_1`` for l1. `Metric` says which
metric needs what (normalised rows, squared row norms, a dot product) and turns rank values
back into the scores a search reports.

`Metric` is a ``str`` enum: ``Metric("l2") == "l2"``, so configs, manifests and JSON keep
plain names while code asks the member (``metric.distance``, ``metric.to_scores(...)``).
"""

from __future__ import annotations

import enum

import numpy as np


class Metric(str, enum.Enum):
    IP = "ip"
    COSINE = "cosine"
    L2 = "l2"
    L1 = "l1"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, name) -> "Metric":
        """The metric called `name` (a Metric passes through); ValueError naming the choices."""
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"unknown metric {name!r}; expected one of {METRICS}") from None

    @property
    def distance(self) -> bool:
        """True where the reported score is a distance (lower is better): l2, l1."""
        return self in (Metric.L2, Metric.L1)

    @property
    def normalised(self) -> bool:
        """True where corpus rows and queries are scaled to unit length first (cosine)."""
        return self is Metric.COSINE

    @property
    def uses_dot(self) -> bool:
        """True where the rank value comes from a dot product q.x (all but l1)."""
        return self is not Metric.L1

    @property
    def needs_norms(self) -> bool:
        """True where the rank value needs each corpus row's |x|^2 (l2)."""
        return self is Metric.L2

    @property
    def mode(self) -> int:
        """Integer code for kernels (CUDA C, Triton-language): 0 a dot product, 1 l2, 2 l1."""
        return _MODES[self]

    def normalize(self, x, xp=np):
        """Rows of `x` scaled to unit length for cosine (NumPy or CuPy via `xp`); else `x` unchanged."""
        if not self.normalised:
            return x
        return x / xp.maximum(xp.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def rank_values(self, scores, q_sq_norms=None):
        """"Larger is better" rank values from reported scores (l2 needs |q|^2 [B, 1])."""
        if self is Metric.L2:
            return np.asarray(q_sq_norms, dtype=np.float32) - scores
        if self is Metric.L1:
            return -scores
        return scores

    def to_scores(self, ranked: np.ndarray, q_sq_norms=None) -> np.ndarray:
        """Reported scores from rank values on the host (l2 needs |q|^2 as a [B, 1] array)."""
        if self is Metric.L2:
            return np.maximum(np.asarray(q_sq_norms) - ranked, 0).astype(np.float32)
        if self is Metric.L1:
            return -ranked
        return ranked


_MODES = {Metric.IP: 0, Metric.COSINE: 0, Metric.L2: 1, Metric.L1: 2}
METRICS = tuple(m.value for m in Metric)
