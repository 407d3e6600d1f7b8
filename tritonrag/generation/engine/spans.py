"""Span-constrained decoding: an answer made only of a contiguous run of a source's tokens.

A `SpanConstraint` holds the token ids of its sources (for answer_mode "quote", the
reranker's evidence sentence). Its first token may be any token of any source (with
`anchored`, a source's first token); each later token must continue, in at least one place, the run of
tokens already chosen, so the whole answer is a copy of one stretch of one source. An end
token may follow the first token; once the run cannot be continued anywhere, only an end
token is allowed. The model still chooses: among the allowed ids the engine takes the most
likely (or samples among them), so where the answer starts and stops is the model's call.
"""

from __future__ import annotations

from typing import Sequence


class SpanConstraint:
    def __init__(self, sources: Sequence[Sequence[int]], end_ids: Sequence[int], anchored: bool = False):
        self.sources = [list(s) for s in sources if len(s)]
        if not self.sources:
            raise ValueError("a span constraint needs at least one non-empty source")
        self.end_ids = sorted(set(end_ids))
        if not self.end_ids:
            raise ValueError("a span constraint needs an end token")
        self.anchored = anchored   # every span starts at a source's first token
        # (source, position) pairs where the chosen run ends; None before the first token
        self._ends: list[tuple[int, int]] | None = None

    def allowed(self) -> list[int]:
        """The token ids the next step may choose (sorted, never empty)."""
        if self._ends is None:
            return sorted({s[0] for s in self.sources} if self.anchored else {t for s in self.sources for t in s})
        nexts = {self.sources[s][p + 1] for s, p in self._ends if p + 1 < len(self.sources[s])}
        return sorted(nexts | set(self.end_ids))

    def advance(self, token: int) -> None:
        """Record the chosen token (it must be one `allowed()` gave; an end token ends the run)."""
        if token in self.end_ids and self._ends is not None:
            self._ends = []
            return
        if self._ends is None:
            ends = [(s, p) for s, source in enumerate(self.sources) for p, t in enumerate(source)
                    if t == token and (p == 0 or not self.anchored)]
        else:
            ends = [(s, p + 1) for s, p in self._ends
                    if p + 1 < len(self.sources[s]) and self.sources[s][p + 1] == token]
        if not ends:
            raise ValueError(f"token {token} does not continue the span")
        self._ends = ends
