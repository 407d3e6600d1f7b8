"""Open-loop load for what perf_analyzer does not report: every request's outcome.

perf_analyzer drives concurrency and request-rate sweeps (perf/sweep.py). Overload, fault
and soak runs need more: arrivals that do not slow down when the server does (open
loop), and for each request whether it was answered, rejected by a full queue, or failed,
with the server's message and when it happened. This module sends them with the asyncio
tritonclient (through tritonrag_client.AsyncRagClient) and samples the server's memory.

Arrival patterns: constant (evenly spaced), poisson (exponential gaps), bursty (Poisson
bursts of `burst` requests at once, same mean rate).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import statistics
import time
from pathlib import Path
from typing import Awaitable, Callable

from tritonrag.server.supervisor import child_processes
from tritonrag_client import RagError
from tritonrag_client.aio import AsyncRagClient

REJECTED_MARKERS = ("Exceeds maximum queue size", "timeout", "Request timeout expired")


@dataclasses.dataclass
class Outcome:
    sent_s: float          # seconds since the run started
    latency_s: float
    kind: str              # "ok", "rejected" (queue full / timed out in queue), "error"
    message: str = ""


def classify(error: RagError) -> str:
    text = str(error)
    return "rejected" if any(m.lower() in text.lower() for m in REJECTED_MARKERS) else "error"


def arrival_times(rate: float, duration_s: float, pattern: str = "poisson", burst: int = 8,
                  seed: int = 0) -> list[float]:
    """Send times in [0, duration_s) with mean `rate` requests/s."""
    rng = random.Random(seed)
    times: list[float] = []
    if pattern == "constant":
        step = 1.0 / rate
        times = [i * step for i in range(int(duration_s * rate))]
    elif pattern == "poisson":
        t = rng.expovariate(rate)
        while t < duration_s:
            times.append(t)
            t += rng.expovariate(rate)
    elif pattern == "bursty":
        t = rng.expovariate(rate / burst)
        while t < duration_s:
            times.extend([t] * burst)
            t += rng.expovariate(rate / burst)
    else:
        raise ValueError(f"unknown arrival pattern {pattern!r}")
    return times


async def open_loop(url: str, questions: list[str], times: list[float], timeout_s: float = 300.0,
                    protocol: str = "grpc", model: str = "rag_ensemble", **ask_kwargs) -> list[Outcome]:
    """Send question i at times[i] (cycling through questions) whatever the server does."""
    outcomes: list[Outcome] = []
    async with AsyncRagClient(url, protocol=protocol, timeout_s=timeout_s, model=model) as client:
        start = time.perf_counter()

        async def one(i: int, at: float) -> None:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
            sent = time.perf_counter()
            try:
                await client.ask(questions[i % len(questions)], **ask_kwargs)
                outcomes.append(Outcome(sent - start, time.perf_counter() - sent, "ok"))
            except RagError as exc:
                outcomes.append(Outcome(sent - start, time.perf_counter() - sent, classify(exc), str(exc)[:300]))

        await asyncio.gather(*(one(i, at) for i, at in enumerate(times)))
    return sorted(outcomes, key=lambda o: o.sent_s)


async def closed_loop(url: str, questions: list[str], concurrency: int, duration_s: float,
                      protocol: str = "grpc", model: str = "rag_ensemble", **ask_kwargs) -> list[Outcome]:
    """`concurrency` clients each sending the next request when the last one returns."""
    async with AsyncRagClient(url, protocol=protocol, timeout_s=600, model=model) as client:
        async def send(question: str) -> None:
            await client.ask(question, **ask_kwargs)

        return await closed_loop_with(send, questions, concurrency, duration_s)


async def closed_loop_with(send: Callable[[str], Awaitable[object]], questions: list[str], concurrency: int,
                           duration_s: float | None = None, requests: int | None = None) -> list[Outcome]:
    """Closed loop over any `send(question)` coroutine (Triton or another service, same loop).

    Stops sending after `duration_s` seconds and/or once `requests` have been sent.
    """
    outcomes: list[Outcome] = []
    start = time.perf_counter()
    sent_count = 0

    async def worker(w: int) -> None:
        nonlocal sent_count
        i = w
        while (duration_s is None or time.perf_counter() - start < duration_s) and \
                (requests is None or sent_count < requests):
            sent_count += 1
            sent = time.perf_counter()
            try:
                await send(questions[i % len(questions)])
                outcomes.append(Outcome(sent - start, time.perf_counter() - sent, "ok"))
            except Exception as exc:  # noqa: BLE001 — every outcome is recorded, whatever the client raised
                kind = classify(exc) if isinstance(exc, RagError) else "error"
                outcomes.append(Outcome(sent - start, time.perf_counter() - sent, kind, str(exc)[:300]))
            i += concurrency

    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return sorted(outcomes, key=lambda o: o.sent_s)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summarize(outcomes: list[Outcome], duration_s: float | None = None) -> dict:
    """Counts, answered requests/s and latency percentiles per outcome kind."""
    ok = [o.latency_s for o in outcomes if o.kind == "ok"]
    rejected = [o.latency_s for o in outcomes if o.kind == "rejected"]
    span = duration_s or (max((o.sent_s + o.latency_s for o in outcomes), default=0.0) or 1.0)
    return {
        "requests": len(outcomes),
        "ok": len(ok),
        "rejected": len(rejected),
        "errors": sum(1 for o in outcomes if o.kind == "error"),
        "answered_per_s": len(ok) / span,
        "ok_p50_s": percentile(ok, 50), "ok_p90_s": percentile(ok, 90), "ok_p99_s": percentile(ok, 99),
        "ok_mean_s": statistics.fmean(ok) if ok else float("nan"),
        "rejected_p50_s": percentile(rejected, 50), "rejected_p99_s": percentile(rejected, 99),
        "rejected_queue_full": sum(1 for o in outcomes if o.kind == "rejected" and "maximum queue size" in o.message),
        "rejected_timed_out": sum(1 for o in outcomes if o.kind == "rejected" and "timeout" in o.message.lower()),
        "error_messages": sorted({o.message for o in outcomes if o.kind == "error"})[:5],
        "rejected_messages": sorted({o.message for o in outcomes if o.kind == "rejected"})[:3],
    }


def tree_rss_bytes(pid: int, proc: Path = Path("/proc")) -> int:
    """Resident memory of a process and all its descendants (tritonserver + its stubs)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            for line in (proc / str(current) / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
        todo.extend(child_processes(current, proc))
    return total


def peak_growth(samples: list[tuple[float, int]], end: float) -> float | None:
    """Memory growth over a steady load: the peak of the samples in (end/2, end] over the peak
    of those in [0, end/2]; None without samples in both halves. A bounded process levels
    off, so the ratio stays near 1 (the overload test and the fuzz memory check allow
    up to 1.10); a leak keeps growing and shows as a higher second peak."""
    first = [v for t, v in samples if t <= end / 2]
    second = [v for t, v in samples if end / 2 < t <= end]
    return max(second) / max(first) if first and second else None


class MemorySampler:
    """Samples a value (e.g. tree_rss_bytes) every `interval_s` in the background of an asyncio run."""

    def __init__(self, read: Callable[[], int], interval_s: float = 1.0):
        self.read, self.interval_s = read, interval_s
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task | None = None

    async def _loop(self) -> None:
        start = time.perf_counter()
        while True:
            self.samples.append((time.perf_counter() - start, self.read()))
            await asyncio.sleep(self.interval_s)

    async def __aenter__(self) -> "MemorySampler":
        self._task = asyncio.ensure_future(self._loop())
        return self

    async def __aexit__(self, *exc) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
