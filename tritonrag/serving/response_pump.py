"""Send a decoupled Triton model's responses from one thread (see ResponsePump).

Kept free of `triton_python_backend_utils` (the caller passes the final flag and
builds responses) so that it runs and is tested outside the backend stub.
"""

from __future__ import annotations

from typing import Any, Callable


class ResponsePump:
    """Sends a decoupled model's responses from one thread, and notices cancellations.

    The engine thread only enqueues (sending costs an IPC round trip, which would
    stall every sequence of the batch); this thread sends, and every `poll_s` asks
    each live request's sender whether the client cancelled, so that the engine frees
    its slot (`on_cancel(handle)`) even while a non-streaming request has nothing to send.

    Streamed text is coalesced: the pieces of one request that queued up while the pump
    was busy leave as one response. At light load that is one response per token; under
    load the chunks grow instead of the queue: the Python backend's responses per second,
    not the engine, would otherwise bound streamed throughput
    (docs/decisions/0055-serving-glue-choices.md).
    """

    def __init__(self, on_cancel: Callable[[Any], None], poll_s: float = 0.1,
                 on_idle: Callable[[], None] | None = None,
                 text_response: Callable[[str], Any] | None = None, final_flag: int = 1):
        import queue
        import threading

        self._queue: "queue.Queue" = queue.Queue()
        self._live: dict[int, tuple[Any, Any]] = {}
        self._on_cancel, self._on_idle, self._poll_s = on_cancel, on_idle, poll_s
        self._text_response, self._final_flag = text_response, final_flag
        self.responses_sent = 0
        self._thread = threading.Thread(target=self._run, name="response-pump", daemon=True)
        self._thread.start()

    def track(self, sender, handle) -> None:
        self._queue.put(("track", sender, handle, None, False))

    def send(self, sender, handle, response, final: bool) -> None:
        """A whole response (or None: the final flag alone)."""
        self._queue.put(("send", sender, handle, response, final))

    def send_text(self, sender, handle, text: str, final: bool) -> None:
        """A piece of streamed text, merged with the request's other queued pieces."""
        self._queue.put(("text", sender, handle, text, final))

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _drain(self, first) -> tuple[list, bool]:
        """`first` and everything queued behind it, with each request's consecutive
        text pieces merged into one ("send" item); True when stop() was asked."""
        import queue

        items, texts, stopping = [], {}, False   # texts: id(sender) -> index of its open text item in items
        item = first
        while True:
            if item is None:
                stopping = True
            else:
                kind, sender, handle, payload, final = item
                key = id(sender)
                if kind == "text":
                    if key in texts:
                        _, _, _, text, _ = items[texts[key]]
                        items[texts[key]] = ("text", sender, handle, text + payload, final)
                    else:
                        texts[key] = len(items)
                        items.append(item)
                    if final:
                        texts.pop(key, None)
                else:
                    texts.pop(key, None)
                    items.append(item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return items, stopping

    def _deliver(self, kind, sender, handle, payload, final) -> None:
        final_flag = self._final_flag
        if kind == "track":
            self._live[id(sender)] = (sender, handle)
            return
        if id(sender) not in self._live:   # already ended (cancelled)
            return
        response = payload
        if kind == "text":
            response = self._text_response(payload) if payload else None
            if response is None and not final:
                return
        try:
            if response is None:
                sender.send(flags=final_flag)
            else:
                sender.send(response, flags=final_flag if final else 0)
            self.responses_sent += 1
        except Exception:  # noqa: BLE001 — the client went away: end it
            final = True
            self._on_cancel(handle)
        if final:
            self._live.pop(id(sender), None)

    def _run(self) -> None:
        import queue
        import time

        final_flag = self._final_flag
        last_poll = 0.0
        while True:
            try:
                first = self._queue.get(timeout=self._poll_s)
            except queue.Empty:
                first = "poll"
            if first != "poll":
                items, stopping = self._drain(first)
                for item in items:
                    self._deliver(*item)
                if stopping:
                    return
                if not self._queue.empty() or time.monotonic() - last_poll < self._poll_s:
                    continue
            last_poll = time.monotonic()
            for key, (sender, handle) in list(self._live.items()):
                if sender.is_cancelled():
                    self._on_cancel(handle)
                    del self._live[key]
                    try:
                        sender.send(flags=final_flag)
                    except Exception:  # noqa: BLE001
                        pass
            if self._on_idle is not None:
                try:
                    self._on_idle()
                except Exception:  # noqa: BLE001 — metrics must never stop the responses
                    pass
