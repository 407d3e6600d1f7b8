"""Run the rows of many requests concurrently on a thread pool; answer each request once.

The `generator` forwarder turns every row into one blocking BLS call to the decode
engine (`generator_stream`), and must not hold its Triton instance while the engine
works: its `execute` hands the rows here and returns at once (the response is sent
later through the request's response sender), so any number of batches can be in the
engine's continuous batch together, not one per instance.

Why threads and not `async def execute` with `async_exec`: on the H100 host the
forwarder's stubs died under load with the async version ("Stub process
'generator_0_N' is not healthy", Triton 2.51); Triton's own async_exec runs the same
blocking call on asyncio's default executor, so a pool of our own costs nothing and
its size is a setting (`max_rows_in_flight`).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence


class RowFanout:
    """`submit(rows, call, done)`: `call(row)` for every row on the pool, then
    `done(results)` once, from the thread that finished last; `results` is the list of
    values in row order, or the first exception raised (the other rows still finish).
    """

    def __init__(self, max_workers: int, name: str = "fanout"):
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)

    def submit(self, rows: Sequence[Any], call: Callable[[Any], Any],
               done: Callable[[list | BaseException], None]) -> None:
        if not rows:
            raise ValueError("no rows to run")
        results: list = [None] * len(rows)
        state = {"left": len(rows), "error": None}
        lock = threading.Lock()

        def run(index: int, row: Any) -> None:
            try:
                value, error = call(row), None
            except BaseException as exc:  # noqa: BLE001 — handed to done(), never lost in the pool
                value, error = None, exc
            with lock:
                results[index] = value
                if error is not None and state["error"] is None:
                    state["error"] = error
                state["left"] -= 1
                last = state["left"] == 0
            if last:
                done(state["error"] if state["error"] is not None else results)

        for index, row in enumerate(rows):
            self._pool.submit(run, index, row)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
