"""Starting a real `tritonserver` on this machine, with no Docker.

The server binary and the Python backend come from the `nvidia-pytriton` wheel
(or from $TRITONSERVER / $TRITON_BACKENDS, e.g. inside the NGC image). The
launcher makes the backend folder of symlinks (copies would break the libraries'
``$ORIGIN`` paths), builds the index on first use, renders the model repository,
starts the server, waits until it is ready and stops it cleanly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tritonrag.index.corpus import load_corpora
from tritonrag.index.store import IndexCorruptError, build_index, load_index
from tritonrag.models import sources as model_sources

from .repository import render_repository
from .supervisor import Supervisor, SupervisorPolicy

log = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds the tritonrag package

# Triton APIs that change or reveal the server itself rather than serve inference:
# the model repository (index; load and unload are off anyway, see prepare), shared
# memory registration, log and trace settings. The launcher restricts them on HTTP and
# gRPC unless `ServerSettings.open_apis` names them. health, metadata, inference,
# model-config and statistics stay open (clients, perf_analyzer and the tests use them).
ADMIN_APIS = ("model-repository", "shared-memory", "logging", "trace")
# retriever parameters the reranker reads too: `--param retriever.X` sets both
SHARED_WITH_RERANKER = ("default_top_k", "max_top_k", "max_embedding_norm")
# Triton restricts an API behind a header name and value given on its command line, which
# every local user can read (ps). So the restriction names a header no client can send:
# a newline is neither allowed in an HTTP header name nor in a gRPC metadata key. No key
# exists, so none can leak; nothing of ours needs these APIs (the supervisor restarts the
# server instead of reloading models).
_UNSENDABLE_HEADER = "tritonrag-locked\n=\n"


@dataclass
class ServerSettings:
    """Everything that decides what a server serves and where it listens."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    embedder: str = model_sources.DEFAULT_EMBEDDER
    generator: str = model_sources.DEFAULT_GENERATOR
    corpus: list[str] = field(default_factory=lambda: ["pydoc"])
    index: Path | None = None  # an existing index folder; the cached one built from `corpus` when None
    # With `index`: build it from `corpus` where no folder (or an empty one) is there yet
    # (`serve --build-index`); an existing index is never replaced.
    build_index: bool = False
    tritonserver: str | None = None
    backend_dir: str | None = None
    extra_parameters: dict[str, dict[str, str]] = field(default_factory=dict)
    log_verbose: int = 0
    ready_timeout_s: float = 600.0
    # Admin APIs (of ADMIN_APIS) to leave open to anyone who can reach the ports.
    open_apis: set[str] = field(default_factory=set)
    # Restart a dead, hung or partly dead server (tritonrag.server.supervisor).
    supervise: bool = True
    supervision: SupervisorPolicy | None = None
    # Overload limits per model, over config.pbtxt's default_queue_policy.
    max_queue: dict[str, int] = field(default_factory=dict)
    queue_timeout_s: dict[str, float] = field(default_factory=dict)
    # {model: {"max_batch_size" | "max_queue_delay_us" | "instances": n}} (benchmark variants)
    scheduling: dict[str, dict[str, int]] = field(default_factory=dict)



# Triton's log line when a stop has no inference in flight any more and only unloading is left
DRAINED = "All models are stopped, unloading models"


def free_ports(count: int) -> list[int]:
    """`count` distinct free TCP ports on loopback (for test and benchmark servers)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def restricted_api_options(open_apis: set[str]) -> list[str]:
    """tritonserver options that lock the admin APIs not in `open_apis` (no key opens them)."""
    unknown = set(open_apis) - set(ADMIN_APIS)
    if unknown:
        raise ValueError(f"unknown admin API {sorted(unknown)}; choose from {', '.join(ADMIN_APIS)}")
    restricted = [api for api in ADMIN_APIS if api not in open_apis]
    if not restricted:
        return []
    spec = f"{','.join(restricted)}:{_UNSENDABLE_HEADER}"
    return [f"--http-restricted-api={spec}", f"--grpc-restricted-protocol={spec}"]


def _pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("tritonserver not found: pip install nvidia-pytriton==0.7.0, "
                                "or set TRITONSERVER and TRITON_BACKENDS")
    return Path(list(spec.submodule_search_locations)[0]) / "tritonserver"


def find_tritonserver(explicit: str | None = None) -> str:
    path = explicit or os.environ.get("TRITONSERVER") or str(_pytriton_root() / "bin" / "tritonserver")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"tritonserver binary {path} is missing or not executable")
    return path


def backend_directory(explicit: str | None = None) -> Path:
    """A backends folder whose python/ holds symlinks to the wheel's backend and our Python's stub."""
    chosen = explicit or os.environ.get("TRITON_BACKENDS")
    if chosen:
        return Path(chosen)
    root = _pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise FileNotFoundError(f"the Triton Python backend has no stub for Python {version}")
    folder = model_sources.cache_dir() / "backends" / f"py{version}"
    python_dir = folder / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in [*(root / "backends" / "python").glob("*.*"), stub]:
        link = python_dir / source.name
        if link.is_symlink() and os.readlink(link) == str(source):
            continue
        tmp = python_dir / f".{source.name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(source)
        os.replace(tmp, link)  # atomic, so concurrent launchers never see a half-made folder
    return folder


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60]


def default_index_path(corpus: list[str], embedder: str) -> Path:
    key = "\n".join([*(str(Path(c).resolve()) if Path(c).exists() else c for c in corpus), embedder])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    name = f"{_slug('+'.join(Path(c).stem for c in corpus))}__{_slug(model_sources.model_name(embedder))}__{digest}"
    return model_sources.cache_dir() / "indexes" / name


def ensure_index(corpus: list[str], embedder: str, path: Path | None = None, progress: bool = True,
                 build: bool = False) -> Path:
    """The index to serve: the given folder, checked, or the cached one for (corpus, embedder).

    A given `path` is the user's index: a missing, damaged or mistyped one is an error
    (IndexProblem), never built or rebuilt from `corpus` over the user's data (`tritonrag
    index` builds one); only with `build` is it built from `corpus` where no folder, or an
    empty one, is there yet. The cached index under the cache dir is the package's own:
    reused when sound, else built (or rebuilt). An index made by another embedder is an
    error either way, not a rebuild: it may be a user's only copy of a large corpus.
    """
    if path is not None:
        path = Path(path)
        if build and (not path.exists() or (path.is_dir() and not any(path.iterdir()))):
            _build_index(corpus, embedder, path, progress)
        else:
            load_index(path, embedder=model_sources.model_name(embedder))
        return path
    path = default_index_path(corpus, embedder)
    try:
        load_index(path, embedder=model_sources.model_name(embedder))
        return path
    except IndexCorruptError as exc:
        if path.exists():
            log.warning("rebuilding the index: %s", exc)
    _build_index(corpus, embedder, path, progress)
    return path


def _build_index(corpus: list[str], embedder: str, path: Path, progress: bool) -> None:
    import torch

    from tritonrag.models.embedding import Embedder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    log.info("building the index for %s with %s on %s at %s", corpus, embedder, device, path)
    encoder = Embedder(embedder, device=device)
    build_index(path, load_corpora(corpus), encoder.embed_passages, embedder=model_sources.model_name(embedder),
                progress=progress)


def server_environment() -> dict[str, str]:
    """The stub processes import numpy/torch/tritonrag from this interpreter's paths.

    TRITONRAG_STUB_PYTHONPATH replaces this interpreter's paths for the stubs: Triton
    2.51's stub breaks on BYTES tensors under NumPy 2, so a host whose Python has
    NumPy 2 points the stubs at a NumPy 1 environment.
    """
    env = dict(os.environ)
    stub_paths = env.get("TRITONRAG_STUB_PYTHONPATH")
    if stub_paths:
        paths = [str(PACKAGE_ROOT), stub_paths]
    else:
        paths = [str(PACKAGE_ROOT), *filter(None, [env.get("PYTHONPATH")]),
                 sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return env


class TritonServer:
    """A running tritonserver process; use as a context manager or call start()/stop()."""

    def __init__(self, settings: ServerSettings, run_dir: Path | None = None, log_path: Path | None = None):
        self.settings = settings
        self.run_dir = Path(run_dir) if run_dir else model_sources.cache_dir() / "run" / f"{settings.http_port}"
        self.log_path = Path(log_path) if log_path else self.run_dir / "tritonserver.log"
        self.process: subprocess.Popen | None = None
        self.index_path: Path | None = None
        self.supervisor: Supervisor | None = None
        self.stopped_cleanly = False
        # after the drain, how long Triton may go on unloading before it is killed
        self.teardown_grace_s = 0.5
        self._log_file = None

    @property
    def http_url(self) -> str:
        return f"{self.settings.host}:{self.settings.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.settings.host}:{self.settings.grpc_port}"

    def prepare(self) -> list[str]:
        """Build the index, render the repository; return the server command line."""
        s = self.settings
        admin_options = restricted_api_options(s.open_apis)  # checked before the slow part
        self.index_path = ensure_index(s.corpus, s.embedder, s.index, build=s.build_index)
        overrides: dict[str, dict[str, str]] = {
            "embedder": {"embedder_model": s.embedder},
            "retriever": {"embedder_model": s.embedder, "index_path": str(self.index_path)},
            "reranker": {"embedder_model": s.embedder, "index_path": str(self.index_path)},
            "generator_stream": {"generator_model": s.generator},
        }
        if "generator" in s.max_queue:
            # the forwarder answers later and never fills its own Triton queue: the requests
            # wait in the engine, so its queue bound is the engine's
            overrides["generator_stream"]["max_waiting"] = str(s.max_queue["generator"])
        for model, params in s.extra_parameters.items():
            overrides.setdefault(model, {}).update(params)
        # the reranker cuts the retriever's candidates to top_k: both read the same top_k bounds
        for name in SHARED_WITH_RERANKER:
            if name in s.extra_parameters.get("retriever", {}) and name not in s.extra_parameters.get("reranker", {}):
                overrides.setdefault("reranker", {})[name] = s.extra_parameters["retriever"][name]
        repository = render_repository(self.run_dir / "model_repository", overrides,
                                       max_queue=s.max_queue, queue_timeout_s=s.queue_timeout_s,
                                       scheduling=s.scheduling)
        return [
            find_tritonserver(s.tritonserver),
            f"--model-repository={repository}",
            f"--backend-directory={backend_directory(s.backend_dir)}",
            f"--http-address={s.host}", f"--http-port={s.http_port}",
            f"--grpc-address={s.host}", f"--grpc-port={s.grpc_port}",
            f"--metrics-address={s.host}", f"--metrics-port={s.metrics_port}",
            "--allow-cpu-metrics=true",
            # p50/p99 per model on :8002 (the Grafana dashboard's latency panel)
            "--metrics-config=summary_latencies=true",
            f"--log-verbose={s.log_verbose}",
            "--exit-on-error=true",
            "--disable-auto-complete-config",
            # Model control "none": every model loads at start and the repository API can
            # neither load (a model upload would run code as this service) nor unload.
            "--model-control-mode=none",
            *admin_options,
        ]

    def start(self) -> "TritonServer":
        self._launch()
        if self.settings.supervise:
            self.supervisor = Supervisor(self, self.settings.supervision)
            self.supervisor.start()
        return self

    def _launch(self) -> None:
        command = self.prepare()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log.info("starting %s (log: %s)", " ".join(map(repr, command)), self.log_path)
        if self._log_file is None or self._log_file.closed:
            self._log_file = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, env=server_environment(), stdout=self._log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_until_ready(self.settings.ready_timeout_s)
        except BaseException:
            self._terminate()
            raise

    def relaunch(self, grace_s: float = 30.0) -> None:
        """Start the server again after it died or got stuck (the supervisor calls this)."""
        self._terminate(grace_s)
        self._launch()

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_until_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.process.returncode}; "
                                   f"last log lines:\n{self.log_tail()}")
            if self.is_ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"tritonserver not ready after {timeout_s:.0f} s; last log lines:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> bool:
        """SIGTERM: Triton refuses new requests and finishes those in flight; then it is ended.

        True when the in-flight requests finished (a clean stop), False when they did not
        within `timeout_s` or the server failed by itself.
        """
        if self.supervisor is not None:
            self.supervisor.stop()
        self._terminate(timeout_s)
        if self._log_file is not None:
            self._log_file.close()
        return self.stopped_cleanly

    def _terminate(self, timeout_s: float = 30.0) -> int | None:
        """Stop the server: SIGTERM, wait for its in-flight requests, then end it and its stubs.

        Once Triton logs that its requests are done (DRAINED), what is left of its stop is
        teardown: it unloads each Python model instance in turn, and the Python backend
        waits a fixed second per instance before it finalizes the stub (8 `rag_bls`
        instances alone take 8 s); the stubs' interpreter teardown is also where their
        threads can crash. No model holds state that teardown would save (the index is
        read-only when serving), so after the drain and `teardown_grace_s` the process
        group is killed.
        """
        if self.process is None:
            return None
        self.stopped_cleanly = self.process.poll() is None
        if self.process.poll() is None:
            logged = self.log_path.stat().st_size if self.log_path.exists() else 0
            self.process.send_signal(signal.SIGTERM)
            deadline, drained_at = time.monotonic() + timeout_s, None
            while self.process.poll() is None:
                now = time.monotonic()
                if drained_at is None and self._log_since(logged, DRAINED):
                    drained_at = now
                if now >= deadline or (drained_at is not None and now - drained_at >= self.teardown_grace_s):
                    break
                time.sleep(0.05)
            exited = self.process.poll()
            self.stopped_cleanly = drained_at is not None or exited == 0
            if exited is None:
                if drained_at is None:
                    log.error("tritonserver did not finish its requests within %.0f s: killing it", timeout_s)
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # Stub processes live in the server's session; make sure none outlives it.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.process.returncode

    def _log_since(self, offset: int, text: str) -> bool:
        try:
            with open(self.log_path, "rb") as handle:
                handle.seek(offset)
                return text.encode() in handle.read()
        except OSError:
            return False

    def __enter__(self) -> "TritonServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
