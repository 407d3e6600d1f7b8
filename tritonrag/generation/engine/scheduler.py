"""Iteration-level (continuous) batching over a `DecodeEngine`.

Between two decode steps, waiting requests are prefilled and join the running
batch, and requests that finished (their own `max_tokens`, an end token, a stop
string, a cancellation) leave it and free their slot at once, so a short answer
never waits for a long one. Admission is bounded by `max_batch` running sequences,
`max_tokens_in_flight` reserved KV positions (prompt + max_tokens of everything
running) and `prefill_tokens` prompt tokens prefilled between two steps (so that a
burst of arrivals delays the running batch by a bounded amount).

With `prefill_wait_ms` > 0 (off by default), a request that arrives while others decode waits
up to that long for later arrivals, so that their prompts are prefilled in one call: each
prefill call pauses every running sequence for its whole length, and an eager one costs the
host a fixed launch time whatever it holds. It is admitted at once when nothing runs or when the
waiting prompts fill a prefill (`prefill_tokens`).

With `overlap` (the default when the engine runs on CUDA) greedy decode steps are
pipelined: step n+1 is launched, its tokens taken from step n's ids still on the
device, before the host reads step n's ids and runs the callbacks, so the GPU does
not wait for the Python side between steps. A prefill is likewise queued behind the
step in flight before the host reads that step. A sequence that ended at step n (an end
token) has had one step n+1 computed for it, which is dropped. Any running sequence
that samples (temperature > 0) or is constrained to spans of its sources (`spans`) makes
the steps synchronous again: its next token is chosen on the host from the step's logits.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from .sampling import sample
from .spans import SpanConstraint

log = logging.getLogger(__name__)


class SequenceError(ValueError):
    """A request the engine cannot take (too long for a slot)."""


@dataclass(eq=False)
class Sequence:
    """One request's state. `on_token(seq, token, finished)` is called from the engine
    thread for every new token (token None when it ends without one: cancelled, failed)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop_ids: frozenset = frozenset()
    on_token: Callable[["Sequence", int | None, bool], None] | None = None
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None   # "length", "stop", "cancelled", "error"
    error: str | None = None
    slot: int | None = None
    text: object = None                # the caller's decoded-text state (generation.IncrementalText)
    constraint: SpanConstraint | None = None   # the answer copies a span of these sources
    submitted: float = 0.0             # time.monotonic() when it was submitted
    _stop_request: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the engine to end this sequence before its next step (any thread)."""
        self._stop_request = reason

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class ContinuousBatcher:
    def __init__(self, engine, max_batch: int | None = None, max_tokens_in_flight: int | None = None,
                 prefill_tokens: int = 8192, overlap: bool | None = None, prefill_wait_ms: float = 0.0):
        self.engine = engine
        self.max_batch = min(max_batch or engine.slots, engine.slots)
        self.max_tokens_in_flight = max_tokens_in_flight or engine.slots * engine.max_len
        self.prefill_tokens = prefill_tokens
        self.prefill_wait_s = max(0.0, prefill_wait_ms) / 1000
        self.prefills = 0              # prefill calls made (each admits one or more prompts)
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: dict[int, Sequence] = {}
        self._reserved = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0
        self.batch_sizes: collections.Counter = collections.Counter()
        self.overlap = getattr(engine.device, "type", "cpu") == "cuda" if overlap is None else overlap
        self._pending: tuple[dict[int, Sequence], object] | None = None   # launched, not yet read

    # -- submitting (any thread) ------------------------------------------------------

    def submit(self, seq: Sequence) -> Sequence:
        if not seq.prompt_ids:
            raise SequenceError("empty prompt")
        vocab = self.engine.w.vocab_size
        if min(seq.prompt_ids) < 0 or max(seq.prompt_ids) >= vocab:   # an id past the embedding fails the step
            raise SequenceError(f"prompt token ids must lie in [0, {vocab})")
        if seq.constraint is not None and any(t < 0 or t >= vocab for s in seq.constraint.sources for t in s):
            raise SequenceError(f"quoted token ids must lie in [0, {vocab})")   # they index the logits
        if seq.max_tokens < 1:
            raise SequenceError("max_tokens must be at least 1")
        need = len(seq.prompt_ids) + seq.max_tokens - 1
        if need > self.engine.max_len:
            raise SequenceError(f"prompt ({len(seq.prompt_ids)} tokens) + max_tokens ({seq.max_tokens}) "
                                f"exceed the engine's {self.engine.max_len + 1} positions")
        seq.submitted = time.monotonic()
        with self._cond:
            self.waiting.append(seq)
            self._cond.notify()
        return seq

    # -- the loop (one thread) ---------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="decode-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._pending = None
        for seq in list(self.running.values()) + list(self.waiting):
            self._finish(seq, None, "cancelled")
        self.waiting.clear()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self.waiting and not self.running:
                    self._cond.wait()
                if self._stopping:
                    return
            self.step()

    def run_until_idle(self) -> None:
        """Drive the loop in the calling thread until nothing is waiting or running."""
        while self.waiting or self.running:
            self.step()

    def step(self) -> None:
        """Retire, admit + prefill, then one decode step for everything running."""
        try:
            self._retire_requested()
            admitted = self._admit()
            if admitted:
                prefilled = self._launch_prefill(admitted)
                self._flush()           # read step n while the GPU runs the prefill queued behind it
                self._emit(*prefilled)
            if self.running and self.overlap and not any(_on_host(s) for s in self.running.values()):
                launched = self._launch()
                self._flush()                   # read step n while the GPU runs step n+1
                self._pending = launched
            else:
                self._flush()
                if self.running:
                    self._decode()
        except Exception as exc:  # noqa: BLE001 — fail the requests in flight, keep serving
            self._pending = None
            log.exception("decode step failed")
            for seq in list(self.running.values()):
                seq.error = f"{type(exc).__name__}: {exc}"
                self._finish(seq, None, "error")

    def _retire_requested(self) -> None:
        for seq in [s for s in self.running.values() if s._stop_request]:
            self._finish(seq, None, seq._stop_request)
        with self._cond:
            cancelled = [s for s in self.waiting if s._stop_request]
            for seq in cancelled:
                self.waiting.remove(seq)
        for seq in cancelled:
            self._finish(seq, None, seq._stop_request)

    def _prefill_due(self) -> bool:
        """Whether the waiting requests are prefilled now rather than held for later arrivals
        (`prefill_wait_ms`; caller holds the lock)."""
        if not self.waiting or not self.running or self.prefill_wait_s <= 0:
            return True
        if time.monotonic() - self.waiting[0].submitted >= self.prefill_wait_s:
            return True
        tokens = 0
        for seq in self.waiting:
            tokens += len(seq.prompt_ids)
            if tokens >= self.prefill_tokens:
                return True
        return False

    def _admit(self) -> list[Sequence]:
        admitted, prompt_tokens = [], 0
        with self._cond:
            if not self._prefill_due():
                return admitted
            while self.waiting and self.engine.cache.free_slots and len(self.running) < self.max_batch:
                seq = self.waiting[0]
                need = len(seq.prompt_ids) + seq.max_tokens
                if self._reserved + need > self.max_tokens_in_flight and self.running:
                    break
                if admitted and prompt_tokens + len(seq.prompt_ids) > self.prefill_tokens:
                    break
                self.waiting.popleft()
                seq.slot = self.engine.cache.allocate()
                self._reserved += need
                prompt_tokens += len(seq.prompt_ids)
                self.running[seq.slot] = seq
                admitted.append(seq)
        return admitted

    def _launch_prefill(self, admitted: list[Sequence]):
        """Enqueue the prefill of the admitted prompts; `_emit(*result)` reads their first tokens."""
        # similar lengths together: less padding in each prefill call
        admitted = sorted(admitted, key=lambda s: len(s.prompt_ids))
        self.prefills += 1
        logits = self.engine.prefill([s.slot for s in admitted], [s.prompt_ids for s in admitted])
        return admitted, list(range(len(admitted))), logits, logits.argmax(-1)

    def _decode(self) -> None:
        rows = self.engine.cache.used_rows(set(self.running))
        tokens, positions = [0] * rows, [0] * rows
        for slot, seq in self.running.items():
            tokens[slot] = seq.tokens[-1]
            positions[slot] = len(seq.prompt_ids) + len(seq.tokens) - 1
        logits, greedy = self.engine.decode(tokens, positions)
        order = sorted(self.running)
        self.steps += 1
        self.batch_sizes[len(order)] += 1
        self._emit([self.running[s] for s in order], order, logits, greedy)

    def _launch(self):
        """Enqueue a greedy step for everything running; a sequence whose newest id is still in
        the launched-but-unread step takes it from the device (and is left out if that id is
        its last by length)."""
        carried = self._pending[0] if self._pending else {}
        rows = self.engine.cache.used_rows(set(self.running))
        tokens, positions, carry = [0] * rows, [0] * rows, [False] * rows
        seqs = {}
        for slot, seq in self.running.items():
            if carried.get(slot) is seq:
                if len(seq.tokens) + 1 >= seq.max_tokens:
                    continue
                carry[slot] = True
                positions[slot] = len(seq.prompt_ids) + len(seq.tokens)
            else:
                tokens[slot] = seq.tokens[-1]
                positions[slot] = len(seq.prompt_ids) + len(seq.tokens) - 1
            seqs[slot] = seq
        if not seqs:
            return None
        return seqs, self.engine.decode_async(tokens, positions, carry)

    def _flush(self) -> None:
        """Read the launched step's ids and hand them to the sequences still running."""
        if self._pending is None:
            return
        (seqs, ids), self._pending = self._pending, None
        chosen = ids.tolist()
        self.steps += 1
        self.batch_sizes[len(seqs)] += 1
        live = [slot for slot in sorted(seqs) if self.running.get(slot) is seqs[slot]]
        self._append([seqs[s] for s in live], [chosen[s] for s in live])

    def _emit(self, seqs: list[Sequence], rows: list[int], logits, greedy) -> None:
        """Append each sequence's next token (row `rows[i]` of the step's outputs)."""
        all_greedy = greedy.tolist()
        chosen = [all_greedy[r] for r in rows]
        sampled = [i for i, s in enumerate(seqs) if s.temperature > 0 and s.constraint is None]
        if sampled:
            picks = sample(logits[_index(logits.device, [rows[i] for i in sampled])],
                           [seqs[i].temperature for i in sampled],
                           [seqs[i].top_p for i in sampled]).tolist()
            for i, token in zip(sampled, picks):
                chosen[i] = token
        for i, seq in enumerate(seqs):
            if seq.constraint is not None:
                chosen[i] = _constrained_pick(seq, logits[rows[i]])
        self._append(seqs, chosen)

    def _append(self, seqs: list[Sequence], chosen: list[int]) -> None:
        for seq, token in zip(seqs, chosen):
            seq.tokens.append(token)
            if seq.constraint is not None:
                seq.constraint.advance(token)
            if token in seq.stop_ids:
                self._finish(seq, token, "stop")
            elif len(seq.tokens) >= seq.max_tokens:
                self._finish(seq, token, "length")
            elif seq.on_token is not None:
                self._call(seq, token, False)

    def _finish(self, seq: Sequence, token: int | None, reason: str) -> None:
        seq.finish_reason = reason
        if seq.slot is not None and self.running.get(seq.slot) is seq:
            del self.running[seq.slot]
            self.engine.cache.release(seq.slot)
            self._reserved -= len(seq.prompt_ids) + seq.max_tokens
        if seq.on_token is not None:
            self._call(seq, token, True)
        seq.done.set()

    def _call(self, seq: Sequence, token: int | None, finished: bool) -> None:
        try:
            seq.on_token(seq, token, finished)
        except Exception:  # noqa: BLE001 — a broken consumer ends only its own request
            log.exception("token callback failed")
            if not finished:
                seq.cancel("error")


def _on_host(seq: Sequence) -> bool:
    """Whether the sequence's next token is chosen on the host from the step's logits."""
    return seq.temperature > 0 or seq.constraint is not None


def _constrained_pick(seq: Sequence, row_logits) -> int:
    """The next token among those the sequence's constraint allows: the most likely, or one
    sampled among them when the sequence samples."""
    allowed = seq.constraint.allowed()
    scores = row_logits[_index(row_logits.device, allowed)]
    if seq.temperature > 0:
        return allowed[int(sample(scores[None, :], [seq.temperature], [seq.top_p])[0])]
    return allowed[int(scores.float().argmax())]


def _index(device, positions: list[int]):
    import torch

    return torch.tensor(positions, device=device)
