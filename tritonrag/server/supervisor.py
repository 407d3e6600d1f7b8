"""Keeps a tritonserver serving: restarts it when it dies, hangs, or loses a stub.

Triton 2.51 does none of this by itself. When a model's Python stub process is killed,
the model and the server keep reporting ready while every request to that model fails
with "Stub process '<model>_0_0' is not healthy", for good; a hung stub or server answers
nothing; and a server that dies stays dead. The supervisor watches, every `interval_s`:

1. the server process: exited -> restart;
2. the server's liveness endpoint: no answer within `probe_timeout_s`, `probe_failures`
   times in a row -> restart (a hung server);
3. the stub processes per model: fewer than at start -> restart (checked after 1 and 2,
   so the stubs of a dead server are that server's death, not incidents of their own);
4. a canary request (`canary_model`, one small question, from its own thread): sent and
   unanswered for `hang_s`, or answered with Triton's "Stub process ... is not healthy"
   -> restart (a hung or dead stub on the request path). Any other answer, an error
   included, counts as alive.

The only recovery is a restart of the whole server on the same ports (seconds once the
models are cached): the server runs with no repository load/unload API (see
launcher.prepare), and a reload of single models could strand the BLS callers of a dead
stub. One incident is one restart. More than `max_recoveries` within `window_s` end
supervision (`failed` is set), so that the process exits non-zero and its own supervisor
(Kubernetes, compose, systemd) takes over.
"""

from __future__ import annotations

import collections
import json
import logging
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

_MODEL_PY = re.compile(r"/([^/]+)/\d+/model\.py$")


def child_processes(parent: int, proc: Path = Path("/proc")) -> dict[int, bytes]:
    """{pid: raw cmdline} of the live child processes of `parent` (Linux /proc)."""
    children = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            # the command name may contain spaces and parentheses: fields start after the last ')'
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if int(ppid) == parent and state != "Z":
                children[int(entry.name)] = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
    return children


def stubs_per_model(children: dict[int, bytes]) -> collections.Counter[str]:
    """How many Python backend stub processes each model has, from their command lines.

    A stub runs as `triton_python_backend_stub <repository>/<model>/<version>/model.py <shm> ...`.
    """
    counts: collections.Counter[str] = collections.Counter()
    for cmdline in children.values():
        args = cmdline.decode(errors="replace").split("\x00")
        if len(args) > 1 and args[0].endswith("triton_python_backend_stub"):
            match = _MODEL_PY.search(args[1])
            if match:
                counts[match.group(1)] += 1
    return counts


@dataclass
class SupervisorPolicy:
    """How often to look, what counts as hung, how many recoveries to try before giving up."""

    interval_s: float = 0.5
    max_recoveries: int = 5          # within window_s; one more and supervision ends
    window_s: float = 300.0
    probe_timeout_s: float = 5.0     # one liveness probe of the server
    probe_failures: int = 2          # consecutive unanswered probes that make a hung server
    # The canary: one question through this model (the full pipeline: embedder, retriever,
    # generator and its engine, one BLS instance) every canary_interval_s; unanswered for
    # hang_s makes a hung stub. The bound leaves room for a full queue ahead of it. None: off.
    canary_model: str | None = "rag_bls"
    canary_interval_s: float = 5.0
    hang_s: float = 60.0
    restart_grace_s: float = 5.0     # a dead server needs none, and a stuck one cannot drain


# Triton's answer to a request for a model whose stub it found dead or unresponsive
_UNHEALTHY = "is not healthy"

_CANARY_BODY = json.dumps({"inputs": [
    {"name": "question", "shape": [1, 1], "datatype": "BYTES", "data": ["canary"]},
    {"name": "top_k", "shape": [1, 1], "datatype": "INT32", "data": [1]},
    {"name": "max_tokens", "shape": [1, 1], "datatype": "INT32", "data": [1]},
]}).encode()


class SupervisedServer(Protocol):
    """What the supervisor needs of a running server (`tritonrag.server.launcher.TritonServer`).

    Written as a protocol so that the supervisor does not import the launcher, which
    imports it.
    """

    process: subprocess.Popen
    http_url: str

    def relaunch(self, grace_s: float = ...) -> None: ...

    def admin_headers(self, protocol: str = "http") -> dict[str, str]: ...


class Supervisor:
    """Background thread around a started TritonServer (see the module docstring)."""

    def __init__(self, server: SupervisedServer, policy: SupervisorPolicy | None = None, clock=time.monotonic):
        self.server = server
        self.policy = policy or SupervisorPolicy()
        self.clock = clock
        self.expected: collections.Counter[str] = collections.Counter()
        self.events: list[tuple[float, str, str]] = []  # (time, what, detail) for tests and logs
        self.failed = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()   # held while recovering; stop() waits for it
        self._thread: threading.Thread | None = None
        self._canary_thread: threading.Thread | None = None
        self._unanswered_probes = 0
        self._canary_sent: float | None = None   # when the canary now in flight was sent
        self._canary_broken: str | None = None   # the last canary's answer, when it tells of a broken stub
        self._epoch = 0                         # bumped per restart: a canary of an older server is void

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self.expected = self._stub_counts()
        log.info("supervising tritonserver pid %d, stubs %s", self.server.process.pid, dict(self.expected))
        self._thread = threading.Thread(target=self._run, name="triton-supervisor", daemon=True)
        self._thread.start()
        if self.policy.canary_model:
            self._canary_thread = threading.Thread(target=self._canary_loop, name="triton-canary", daemon=True)
            self._canary_thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            with self._lock:
                pass
            self._thread.join(timeout=5)

    def count(self, what: str) -> int:
        return sum(1 for _, kind, _ in self.events if kind == what)

    # -- the loop --------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.policy.interval_s):
            with self._lock:
                if self._stop.is_set():
                    return
                try:
                    self._check_once()
                except Exception as exc:  # keep watching whatever one check ran into
                    log.exception("supervisor check failed: %s", exc)

    def _check_once(self) -> None:
        """Finds at most one incident and recovers from it (one restart)."""
        reason = self._incident()
        if reason is not None:
            self._recover(reason)

    def _incident(self) -> str | None:
        process = self.server.process
        if process.poll() is not None:
            return f"tritonserver exited with code {process.returncode}"
        if not self._server_answers():
            self._unanswered_probes += 1
            if self._unanswered_probes >= self.policy.probe_failures:
                return (f"tritonserver answered no liveness probe in {self._unanswered_probes} tries "
                        f"of {self.policy.probe_timeout_s:.0f} s")
            return None
        self._unanswered_probes = 0
        counts = self._stub_counts()
        if process.poll() is not None:  # died while we looked: its stubs went with it
            return f"tritonserver exited with code {process.returncode}"
        missing = [f"{model}: {counts[model]} of {n}" for model, n in self.expected.items() if counts[model] < n]
        if missing:
            return "stub processes missing (" + ", ".join(missing) + ")"
        if self._canary_broken:
            return f"{self.policy.canary_model} answered the canary with {self._canary_broken!r}"
        sent = self._canary_sent
        if sent is not None and self.clock() - sent > self.policy.hang_s:
            return f"{self.policy.canary_model} left a canary request unanswered for {self.clock() - sent:.0f} s"
        return None

    def _recover(self, reason: str) -> None:
        now = self.clock()
        recent = [t for t, k, _ in self.events if k == "server-restart" and now - t < self.policy.window_s]
        if len(recent) >= self.policy.max_recoveries:
            log.error("%s; %d recoveries in %.0f s already: giving up", reason, len(recent), self.policy.window_s)
            self.events.append((now, "gave-up", reason))
            self.failed.set()
            self._stop.set()
            return
        log.warning("%s: restarting the server", reason)
        self.events.append((now, "server-restart", reason))
        started = time.monotonic()
        try:
            self._restart_server()
        except Exception as exc:
            log.error("server restart failed: %s", exc)
            self.events.append((self.clock(), "server-restart-failed", str(exc)))
            return
        log.warning("server restart done in %.1f s", time.monotonic() - started)
        self.events.append((self.clock(), "server-restart-done", reason))

    # -- probes and actions --------------------------------------------------------------
    def _stub_counts(self) -> collections.Counter[str]:
        return stubs_per_model(child_processes(self.server.process.pid))

    def _server_answers(self) -> bool:
        """Whether the server answers its liveness endpoint within the bound (any HTTP reply counts)."""
        try:
            with urllib.request.urlopen(f"http://{self.server.http_url}/v2/health/live",
                                        timeout=self.policy.probe_timeout_s) as reply:
                reply.read()
            return True
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError):
            return False

    def _canary_loop(self) -> None:
        while not self._stop.wait(self.policy.canary_interval_s):
            epoch = self._epoch
            self._canary_sent = self.clock()
            request = urllib.request.Request(
                f"http://{self.server.http_url}/v2/models/{self.policy.canary_model}/infer", data=_CANARY_BODY,
                headers={"Content-Type": "application/json"}, method="POST")
            broken = None
            try:
                # past hang_s the loop restarts the server, which ends this request too
                with urllib.request.urlopen(request, timeout=self.policy.hang_s * 2) as reply:
                    reply.read()
            except urllib.error.HTTPError as exc:
                # an answer, but Triton's own verdict on a stub it found dead or hung is an incident
                message = exc.read()[:300].decode(errors="replace")
                if _UNHEALTHY in message:
                    broken = message
            except (urllib.error.URLError, OSError):
                pass  # refused or cut: the server is down or restarting; the loop sees to that
            if epoch == self._epoch:
                self._canary_sent = None
                self._canary_broken = broken

    def _restart_server(self) -> None:
        self.server.relaunch(grace_s=self.policy.restart_grace_s)
        self._epoch += 1
        self._canary_sent = self._canary_broken = None
        self._unanswered_probes = 0
        self.expected = self._stub_counts()
