"""Answer a request once all of its rows are answered, whichever thread answers them.

The `generator` forwarder sends each row of a request to the decode engine on its own
(`tritonrag.serving.engine_link`); the answers come back one by one, on the link's reader
thread, in any order.
"""

from __future__ import annotations

import threading
from typing import Any, Callable


def gather_rows(count: int, done: Callable[[list], None]) -> list[Callable[[Any], None]]:
    """`count` callbacks, one per row; the last of them to be called calls `done(results)`
    with every row's value in row order. Each callback must be called exactly once."""
    if count < 1:
        raise ValueError("no rows to gather")
    results: list = [None] * count
    left = [count]
    lock = threading.Lock()

    def row_done(index: int, value: Any) -> None:
        with lock:
            results[index] = value
            left[0] -= 1
            last = left[0] == 0
        if last:
            done(results)

    return [lambda value, index=index: row_done(index, value) for index in range(count)]
