"""A local socket between the `generator` forwarder and the decode engine's model.

`rag_ensemble` needs a non-decoupled generator, streaming clients a decoupled one, and
both must share one engine (one GPU batch). Triton's BLS would connect them, but Triton
2.51's Python backend stub crashes in its own threads under many concurrent decoupled BLS
streams (docs/decisions/0055-serving-glue-choices.md). So the engine's model also listens
on a Unix socket in a private folder and answers whole questions there; the forwarder
sends each row over it. Errors come back per row, and a dead engine fails its rows at once instead of leaving them hanging.

Wire format: pickled messages over `multiprocessing.connection` (length-prefixed), each a
NamedTuple whose first field names its kind:
  forwarder -> engine  Ask(rid, question, passages, max_tokens, temperature, top_p)
  engine -> forwarder  Done(rid, answer, finish_reason) | Failed(rid, code, message)
`code` is "INVALID_ARG", "UNAVAILABLE" or "INTERNAL"; `finish_reason` "stop" or "length".
"""

from __future__ import annotations

import glob
import logging
import os
import queue
import socket
import tempfile
import threading
from multiprocessing.connection import Client, Listener
from typing import Callable, NamedTuple, Union

log = logging.getLogger(__name__)


class _Ask(NamedTuple):
    kind: str
    rid: int
    question: str
    passages: list
    max_tokens: int
    temperature: float
    top_p: float


class _Done(NamedTuple):
    kind: str
    rid: int
    answer: str
    finish_reason: str


class _Failed(NamedTuple):
    kind: str
    rid: int
    code: str
    message: str


class Ask(_Ask):
    """forwarder -> engine: one question row to answer whole."""
    __slots__ = ()

    def __new__(cls, rid: int, question: str, passages: list, max_tokens: int, temperature: float = 0.0,
                top_p: float = 1.0):
        return super().__new__(cls, "ask", rid, question, passages, max_tokens, temperature, top_p)

    def __getnewargs__(self):
        return tuple(self)[1:]


class Done(_Done):
    """engine -> forwarder: the answer of row `rid`, and why it ended ("stop" or "length")."""
    __slots__ = ()

    def __new__(cls, rid: int, answer: str, finish_reason: str):
        return super().__new__(cls, "done", rid, answer, finish_reason)

    def __getnewargs__(self):
        return tuple(self)[1:]


class Failed(_Failed):
    """engine -> forwarder: row `rid` failed; `code` INVALID_ARG, UNAVAILABLE or INTERNAL."""
    __slots__ = ()

    def __new__(cls, rid: int, code: str, message: str):
        return super().__new__(cls, "error", rid, code, message)

    def __getnewargs__(self):
        return tuple(self)[1:]


Answer = Union[Done, Failed]
Reply = Callable[[Answer], None]


def _hang_up(conn) -> None:
    """Shut down a connection that another thread is blocked reading: that thread wakes
    (EOF) and closes it. Closing here instead would race its close (the same fd twice,
    or a number already reused), and close alone never wakes a blocked reader."""
    try:
        with socket.socket(fileno=os.dup(conn.fileno())) as view:
            view.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def socket_dir() -> str:
    """A folder only this user can enter (the sockets need no other secret)."""
    path = os.path.join(tempfile.gettempdir(), f"tritonrag-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def engine_address(server_id: str, instance: str) -> str:
    """The socket of one engine instance of one Triton server (`server_id`: its pid)."""
    return os.path.join(socket_dir(), f"engine-{server_id}-{instance}.sock")


def find_engines(server_id: str, model: str) -> list[str]:
    """Sockets of the live server's instances of `model` (instance names start with it)."""
    return sorted(glob.glob(os.path.join(socket_dir(), f"engine-{server_id}-{model}_*.sock")))


class EngineServer:
    """Accepts forwarder connections. `start(ask, reply, handle)` runs one `Ask` and must
    call `reply(Done(rid, answer, finish_reason))` or `reply(Failed(rid, code, message))` exactly
    once, from any thread; it may put into the list `handle` what `cancel(handle)` needs to
    stop the row, which happens when its forwarder's connection closes first."""

    def __init__(self, address: str, start: Callable[[Ask, Reply, list], None],
                 cancel: Callable[[object], None] | None = None):
        if os.path.exists(address):
            os.unlink(address)            # left by a crashed server with the same pid
        self.address = address
        self._listener = Listener(address, family="AF_UNIX")
        self._start, self._cancel = start, cancel
        self._closed = False
        self._conns: set = set()
        threading.Thread(target=self._accept, name="engine-link-accept", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn = self._listener.accept()
            except OSError:
                return
            self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="engine-link-conn", daemon=True).start()

    def _serve(self, conn) -> None:
        outbox: "queue.Queue" = queue.Queue()
        live: dict = {}          # rid -> cancel handle the start() function may fill
        lock = threading.Lock()

        def writer() -> None:
            while True:
                message = outbox.get()
                if message is None:
                    return
                try:
                    conn.send(message)
                except OSError:
                    return

        threading.Thread(target=writer, name="engine-link-send", daemon=True).start()
        try:
            while True:
                message: Ask = conn.recv()
                rid = message.rid
                handle: list = []
                with lock:
                    live[rid] = handle

                def reply(answer: Answer, rid=rid) -> None:
                    with lock:
                        live.pop(rid, None)
                    outbox.put(answer)

                try:
                    self._start(message, reply, handle)
                except Exception as exc:  # noqa: BLE001 — this row only
                    reply(Failed(rid, "INTERNAL", f"internal error: {type(exc).__name__}: {exc}"))
        except (EOFError, OSError):
            pass                          # the forwarder went away
        finally:
            outbox.put(None)
            with lock:
                orphans = list(live.values())
                live.clear()
            if self._cancel is not None:
                for handle in orphans:
                    self._cancel(handle)
            self._conns.discard(conn)
            try:
                conn.close()
            except OSError:
                pass

    def close(self) -> None:
        """Stop listening and hang up on every forwarder (their rows fail at once)."""
        self._closed = True
        try:
            with socket.socket(fileno=os.dup(self._listener._listener._socket.fileno())) as view:
                view.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        self._listener.close()
        for conn in list(self._conns):
            _hang_up(conn)
        try:
            os.unlink(self.address)
        except OSError:
            pass


class EngineClient:
    """The forwarder's side: `ask(question, passages, max_tokens, on_done, temperature, top_p)`;
    `on_done` gets `Done` or `Failed`, once, on the reader thread.

    Connects lazily to every engine the server runs (`find()` lists their sockets) and
    spreads rows over them by the fewest rows in flight; a broken connection fails its
    rows with UNAVAILABLE and is dialled again on the next row."""

    def __init__(self, find: Callable[[], list[str]]):
        self._find = find
        self._lock = threading.Lock()
        self._links: dict[str, _Link] = {}
        self._next_rid = 0

    def ask(self, question: str, passages: list[str], max_tokens: int, on_done: Reply,
            temperature: float = 0.0, top_p: float = 1.0) -> None:
        with self._lock:
            self._next_rid += 1
            rid = self._next_rid
            link = self._pick()
        if link is None:
            on_done(Failed(rid, "UNAVAILABLE", "the decode engine is not running"))
            return
        link.send(Ask(rid, question, passages, max_tokens, temperature, top_p), on_done)

    def _pick(self) -> "_Link | None":
        for address in self._find():
            if address not in self._links or self._links[address].broken:
                try:
                    self._links[address] = _Link(address)
                except OSError:
                    self._links.pop(address, None)
        live = [link for link in self._links.values() if not link.broken]
        return min(live, key=lambda link: link.in_flight, default=None)

    def close(self) -> None:
        with self._lock:
            for link in self._links.values():
                link.close()
            self._links.clear()


class _Link:
    """One connection to one engine, with its reader thread."""

    def __init__(self, address: str):
        self._conn = Client(address, family="AF_UNIX")
        self._pending: dict[int, Reply] = {}
        self._lock = threading.Lock()
        self.broken = False
        threading.Thread(target=self._read, name="engine-link-read", daemon=True).start()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def send(self, message: Ask, on_done: Reply) -> None:
        rid = message.rid
        with self._lock:
            if not self.broken:
                self._pending[rid] = on_done
                try:
                    self._conn.send(message)
                    return
                except OSError:
                    self._pending.pop(rid, None)
                    self.broken = True
        on_done(Failed(rid, "UNAVAILABLE", "the decode engine went away"))

    def _read(self) -> None:
        try:
            while True:
                message: Answer = self._conn.recv()
                with self._lock:
                    on_done = self._pending.pop(message.rid, None)
                if on_done is not None:
                    on_done(message)
        except (EOFError, OSError):
            pass
        with self._lock:
            self.broken = True
            orphans = list(self._pending.items())
            self._pending.clear()
        try:
            self._conn.close()            # this thread owns the close (see _hang_up)
        except OSError:
            pass
        for rid, on_done in orphans:
            on_done(Failed(rid, "UNAVAILABLE", "the decode engine went away"))

    def close(self) -> None:
        self.broken = True
        _hang_up(self._conn)
