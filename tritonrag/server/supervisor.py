"""Keeps a tritonserver serving: restarts it when it dies, reloads a model whose stub died.

Triton 2.51 does neither by itself. When a model's Python stub process is killed, the
model and the server keep reporting ready while every request to that model fails with
"Stub process '<model>_0_0' is not healthy", for good (seen here with the generator); and a
server that dies stays dead. The supervisor watches the server process and its stub
processes. A missing stub: unload the model (readiness turns false at once, other models
keep serving, e.g. `rag_retrieve` while the generator is down), then load it again
(2.6 s for the builtin generator on 2 CPU cores). An unload that cannot finish (its
in-flight requests wait on a dead stub) falls back to a server restart after
`unload_timeout_s`, and so does the death of a model that others call through BLS
(`restart_server_for`). A dead server: start it again on the same ports. Repeated
failures within a window end supervision, so that the process exits and its own supervisor (Kubernetes, compose, systemd) takes over.
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
    """How often to look and how many recoveries to try before giving up."""

    interval_s: float = 0.5
    max_recoveries: int = 5          # within window_s; one more and supervision ends
    window_s: float = 300.0
    load_timeout_s: float = 600.0
    # An unload waits for the model's in-flight requests; one whose requests can never
    # finish (a BLS caller's stub died mid-stream, say) would wait for good: past this,
    # the server is restarted instead.
    unload_timeout_s: float = 15.0
    # Models that others call through decoupled BLS: when such a stub dies, its callers'
    # in-flight calls never return (seen with Triton 2.51: the reloaded model answers, the
    # stranded callers wait for good), so a reload would leave them stuck: restart the
    # whole server instead. None by default: the generator forwarder reaches
    # generator_stream over a socket (tritonrag/serving/engine_link.py), whose rows fail at once
    # when the engine dies, and it dials the reloaded engine by itself.
    restart_server_for: tuple[str, ...] = ()


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

    def __init__(self, server: SupervisedServer, policy: SupervisorPolicy | None = None):
        self.server = server
        self.policy = policy or SupervisorPolicy()
        self.expected: collections.Counter[str] = collections.Counter()
        self.events: list[tuple[float, str, str]] = []  # (time, what, detail) for tests and logs
        self.failed = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()   # held while recovering; stop() waits for it
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self.expected = self._stub_counts()
        log.info("supervising tritonserver pid %d, stubs %s", self.server.process.pid, dict(self.expected))
        self._thread = threading.Thread(target=self._run, name="triton-supervisor", daemon=True)
        self._thread.start()

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
        process = self.server.process
        if process.poll() is not None:
            self._recover("server-restart", f"tritonserver exited with code {process.returncode}",
                          self._restart_server)
            return
        counts = self._stub_counts()
        for model, expected in self.expected.items():
            if counts[model] < expected and model in self.policy.restart_server_for:
                self._recover("server-restart", f"{model}: {counts[model]} of {expected} stub processes alive "
                              "(a BLS target)", self._restart_server)
                return
            if counts[model] < expected:
                self._recover("model-reload", f"{model}: {counts[model]} of {expected} stub processes alive",
                              lambda model=model: self._reload_model(model))

    def _recover(self, kind: str, reason: str, action) -> None:
        now = time.monotonic()
        recent = [t for t, k, _ in self.events if k in ("server-restart", "model-reload") and now - t < self.policy.window_s]
        if len(recent) >= self.policy.max_recoveries:
            log.error("%s; %d recoveries in %.0f s already: giving up", reason, len(recent), self.policy.window_s)
            self.events.append((now, "gave-up", reason))
            self.failed.set()
            self._stop.set()
            return
        log.warning("%s: %s", reason, "restarting the server" if kind == "server-restart" else "reloading the model")
        self.events.append((now, kind, reason))
        started = time.monotonic()
        try:
            action()
        except Exception as exc:
            log.error("%s failed: %s", kind, exc)
            self.events.append((time.monotonic(), f"{kind}-failed", str(exc)))
            return
        log.warning("%s done in %.1f s", kind, time.monotonic() - started)
        self.events.append((time.monotonic(), f"{kind}-done", reason))

    # -- actions -------------------------------------------------------------------
    def _stub_counts(self) -> collections.Counter[str]:
        return stubs_per_model(child_processes(self.server.process.pid))

    def _restart_server(self) -> None:
        # short grace: a dead server needs none, and a stuck one cannot drain its requests
        self.server.relaunch(grace_s=5.0)
        self.expected = self._stub_counts()

    def _reload_model(self, model: str) -> None:
        # Unload first: loading a loaded model with an unchanged config is a no-op in
        # Triton, and unloading makes readiness false while the model is away.
        deadline = time.monotonic() + self.policy.unload_timeout_s
        try:
            self._repository(model, "unload", self.policy.unload_timeout_s)
        except OSError as exc:  # a timeout or a dropped connection: the unload hangs
            log.warning("unloading %s did not return (%s)", model, exc)
        while self._stub_counts()[model] and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._stub_counts()[model]:
            log.warning("%s is still unloading after %.0f s (requests that cannot finish): restarting the server",
                        model, self.policy.unload_timeout_s)
            self.events.append((time.monotonic(), "unload-stuck", model))
            self._restart_server()
            return
        self._repository(model, "load")
        if self._stub_counts()[model] < self.expected[model]:
            raise RuntimeError(f"{model} loaded but has {self._stub_counts()[model]} stub processes")

    def _repository(self, model: str, action: str, timeout_s: float | None = None) -> None:
        request = urllib.request.Request(
            f"http://{self.server.http_url}/v2/repository/models/{model}/{action}", data=json.dumps({}).encode(),
            headers={"Content-Type": "application/json", **self.server.admin_headers("http")}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.policy.load_timeout_s) as reply:
                reply.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{action} {model}: HTTP {exc.code} {exc.read()[:300]!r}") from exc
