"""A local socket between the `generator` forwarder and the decode engine's model.

`rag_ensemble` needs a non-decoupled generator, streaming clients a decoupled one, and
both must share one engine (one GPU batch). Triton's BLS would connect them, but Triton
2.51's Python backend stub crashes in its own threads under many concurrent decoupled BLS
streams (docs/decisions/0055-serving-glue-choices.md). So the engine's model also listens
on a Unix socket in a private folder and answers whole questions there; the forwarder
sends each row over it. Errors come back per row, and a dead engine fails its rows at once instead of leaving them hanging.

The forwarder renders and tokenises each row's prompt itself, so that the engine's process
spends its interpreter on decoding: on connecting it learns from the engine how that engine
makes prompts (`PromptRecipe`: the settings of its `tritonrag.generation.prompting.Prompter`),
loads the same tokenizer (no model weights) and sends token ids. A prompt that cannot fit
fails its own row in the forwarder, with the engine's words.

Wire format: pickled messages over `multiprocessing.connection` (length-prefixed), each a
NamedTuple whose first field names its kind:
  engine -> forwarder  PromptRecipe(tokenizer, max_prompt_tokens, system_prompt, prompt_passages,
                       answer_mode), once, first on each connection
  forwarder -> engine  Ask(rid, prompt_ids, max_tokens, temperature, top_p, quotes)
  engine -> forwarder  Done(rid, answer, finish_reason) | Failed(rid, code, message)
`code` is "INVALID_ARG", "UNAVAILABLE" or "INTERNAL"; `finish_reason` "stop" or "length".
The engine still checks what it is sent (ids in its vocabulary, at most max_prompt_tokens of
them, max_tokens within its limits).
"""

from __future__ import annotations

import glob
import logging
import os
import queue
import socket
import tempfile
import threading
import time
from multiprocessing.connection import Client, Listener
from typing import Callable, NamedTuple, Union

from tritonrag.common.request_checks import RequestError
from tritonrag.generation.prompting import Prompter

log = logging.getLogger(__name__)

# the engine sends its PromptRecipe as soon as it accepts; a link that gets none by then is not made
RECIPE_TIMEOUT_S = 10.0


class _PromptRecipe(NamedTuple):
    kind: str
    tokenizer: str
    max_prompt_tokens: int
    system_prompt: str
    prompt_passages: int
    answer_mode: str


class _Ask(NamedTuple):
    kind: str
    rid: int
    prompt_ids: list
    max_tokens: int
    temperature: float
    top_p: float
    quotes: list


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


class PromptRecipe(_PromptRecipe):
    """engine -> forwarder, first on each connection: how the engine makes prompts (its
    `Prompter`'s settings; `tokenizer` is where its tokenizer loaded from)."""
    __slots__ = ()

    def __new__(cls, tokenizer: str, max_prompt_tokens: int, system_prompt: str, prompt_passages: int,
                answer_mode: str = "generate"):
        return super().__new__(cls, "recipe", tokenizer, max_prompt_tokens, system_prompt, prompt_passages,
                               answer_mode)

    def __getnewargs__(self):
        return tuple(self)[1:]

    @classmethod
    def of(cls, prompter: Prompter) -> "PromptRecipe":
        return cls(prompter.source, prompter.max_prompt_tokens, prompter.system_prompt, prompter.prompt_passages,
                   prompter.answer_mode)

    def prompter(self) -> Prompter:
        """The same prompts in this process: loads the tokenizer alone."""
        return Prompter.load(self.tokenizer, self.max_prompt_tokens, self.system_prompt, self.prompt_passages,
                             self.answer_mode)


class Ask(_Ask):
    """forwarder -> engine: one row's prompt, as token ids, to answer whole."""
    __slots__ = ()

    def __new__(cls, rid: int, prompt_ids: list, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                quotes: list = ()):
        return super().__new__(cls, "ask", rid, prompt_ids, max_tokens, temperature, top_p, list(quotes))

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
    """Accepts forwarder connections and sends each the engine's `recipe` first.
    `start(ask, reply, handle)` runs one `Ask` and must call `reply(Done(rid, answer,
    finish_reason))` or `reply(Failed(rid, code, message))` exactly once, from any thread; it
    may put into the list `handle` what `cancel(handle)` needs to stop the row, which happens
    when its forwarder's connection closes first."""

    def __init__(self, address: str, recipe: PromptRecipe, start: Callable[[Ask, Reply, list], None],
                 cancel: Callable[[object], None] | None = None):
        if os.path.exists(address):
            os.unlink(address)            # left by a crashed server with the same pid
        self.address = address
        self.recipe = recipe
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

        outbox.put(self.recipe)           # first: the forwarder renders prompts with it
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
    """The forwarder's side. `ask(question, passages, max_tokens, on_done, temperature, top_p,
    evidence)` renders and sends one row on the caller's thread; `ask_many(rows, on_dones)`
    queues many (tuples of those arguments) and returns at once: a render thread makes their
    prompts together (a few tokenizer calls for all of them) and sends them. `on_done` gets
    `Done` or `Failed`, once: from the rendering thread when the row fails before it is sent
    (its prompt cannot fit, no engine), else from the reader thread.

    Connects lazily to every engine the server runs (`find()` lists their sockets) and
    spreads rows over them by the fewest rows in flight; a broken connection fails its
    rows with UNAVAILABLE and is dialled again on the next row. Each row's prompt is made
    here, by the `Prompter` of the recipe its engine sent (one per distinct recipe)."""

    def __init__(self, find: Callable[[], list[str]]):
        self._find = find
        self._lock = threading.Lock()
        self._render_lock = threading.Lock()     # one thread at a time uses the tokenizers
        self._links: dict[str, _Link] = {}
        self._prompters: dict[PromptRecipe, Prompter] = {}
        self._next_rid = 0
        self._work: "queue.Queue" = queue.Queue()
        self._renderer: threading.Thread | None = None

    def ask(self, question: str, passages: list[str], max_tokens: int, on_done: Reply,
            temperature: float = 0.0, top_p: float = 1.0, evidence: str = "") -> None:
        self._send_rows([(question, passages, max_tokens, temperature, top_p, evidence)], [on_done])

    def ask_many(self, rows: list[tuple], on_dones: list[Reply]) -> None:
        """Queue rows (question, passages, max_tokens, temperature, top_p, evidence) for the
        render thread; rows queued while it is busy are rendered together."""
        with self._lock:
            if self._renderer is None:
                self._renderer = threading.Thread(target=self._render_loop, name="engine-link-render", daemon=True)
                self._renderer.start()
        self._work.put((list(rows), list(on_dones)))

    def _render_loop(self) -> None:
        while True:
            item = self._work.get()
            rows, dones, stop = [], [], item is None
            while item is not None:
                rows += item[0]
                dones += item[1]
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
                stop = stop or item is None
            if rows:
                try:
                    self._send_rows(rows, dones)
                except Exception:  # noqa: BLE001 — _send_rows answers its rows; never stop this thread
                    log.exception("engine link: rows not sent")
            if stop:
                return

    def _send_rows(self, rows: list[tuple], on_dones: list[Reply]) -> None:
        with self._lock:
            live, picked, added = self._live(), [], {}
            for _ in rows:                 # the fewest rows in flight, counting this batch's
                self._next_rid += 1
                link = min(live, key=lambda k: k.in_flight + added.get(k, 0), default=None)
                picked.append((self._next_rid, link))
                if link is not None:
                    added[link] = added.get(link, 0) + 1
        by_recipe: dict = {}
        for index, (rid, link) in enumerate(picked):
            if link is None:
                on_dones[index](Failed(rid, "UNAVAILABLE", "the decode engine is not running"))
            else:
                by_recipe.setdefault(link.recipe, []).append(index)
        for recipe, indices in by_recipe.items():
            try:
                with self._render_lock:
                    prompter = self._prompter(recipe)
                    prompts = prompter.render_many([(rows[i][0], rows[i][1]) for i in indices])
                    quotes = prompter.quote_spans_many([rows[i][5] for i in indices])
            except Exception as exc:  # noqa: BLE001 — these rows only
                for i in indices:
                    on_dones[i](Failed(picked[i][0], "INTERNAL", f"internal error: {type(exc).__name__}: {exc}"))
                continue
            for i, prompt_ids, quoted in zip(indices, prompts, quotes):
                rid, link = picked[i]
                _, _, max_tokens, temperature, top_p, _ = rows[i]
                if isinstance(prompt_ids, RequestError):   # the prompt cannot fit: this row only
                    on_dones[i](Failed(rid, "INVALID_ARG", str(prompt_ids)))
                else:
                    link.send(Ask(rid, prompt_ids, max_tokens, temperature, top_p, quoted), on_dones[i])

    def warm_up(self, timeout_s: float = 600.0, poll_s: float = 0.2) -> bool:
        """Connect to an engine and load its recipe's tokenizer before the first row needs them
        (a forwarder's first rows would otherwise wait seconds for it); whether that happened
        within `timeout_s` (the engine may still be loading)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                link = self._pick()
            if link is not None:
                try:
                    with self._render_lock:
                        self._prompter(link.recipe)
                    return True
                except Exception:  # noqa: BLE001 — the first row will say what is wrong
                    log.exception("engine link: the prompt recipe's tokenizer did not load")
                    return False
            time.sleep(poll_s)
        return False

    def _prompter(self, recipe: PromptRecipe) -> Prompter:
        if recipe not in self._prompters:    # loaded once, on the first row for its engine
            self._prompters[recipe] = recipe.prompter()
        return self._prompters[recipe]

    def _live(self) -> "list[_Link]":
        """The links to every engine the server runs, dialling those not (or no longer) connected."""
        for address in self._find():
            if address not in self._links or self._links[address].broken:
                try:
                    self._links[address] = _Link(address)
                except OSError:
                    self._links.pop(address, None)
        return [link for link in self._links.values() if not link.broken]

    def _pick(self) -> "_Link | None":
        return min(self._live(), key=lambda link: link.in_flight, default=None)

    def close(self) -> None:
        self._work.put(None)
        with self._lock:
            for link in self._links.values():
                link.close()
            self._links.clear()


class _Link:
    """One connection to one engine, with its reader thread."""

    def __init__(self, address: str):
        self._conn = Client(address, family="AF_UNIX")
        try:
            if not self._conn.poll(RECIPE_TIMEOUT_S):
                raise OSError(f"no prompt recipe from the engine in {RECIPE_TIMEOUT_S:.0f} s")
            self.recipe: PromptRecipe = self._conn.recv()
            if getattr(self.recipe, "kind", None) != "recipe":
                raise OSError(f"the engine's first message is not a prompt recipe: {self.recipe!r:.100}")
        except (OSError, EOFError) as exc:
            self._conn.close()
            raise OSError(str(exc)) from exc
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
