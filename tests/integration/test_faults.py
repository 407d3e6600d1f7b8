"""Faults under load: a model's stub process killed, the whole server killed.

Only in-flight requests may fail, with clear errors; readiness says "not ready" while a
part is down; the supervisor (tritonrag.server.supervisor) brings it back and requests succeed.
These tests kill processes, so they run their own server, not the session one.
"""

import os
import signal
import threading
import time

import pytest

from tritonrag.server.launcher import ServerSettings, TritonServer
from tritonrag.server.supervisor import child_processes, stubs_per_model
from tritonrag_client import RagClient, RagError

from .conftest import free_ports

pytestmark = pytest.mark.integration

QUESTION = "What does the with statement do?"


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    http, grpc, metrics = free_ports(3)
    settings = ServerSettings(http_port=http, grpc_port=grpc, metrics_port=metrics)  # pydoc corpus, cached index
    with TritonServer(settings, run_dir=tmp_path_factory.mktemp("faults")) as server:
        yield server


def stub_pid(server, model: str) -> int:
    for pid, cmdline in child_processes(server.process.pid).items():
        if stubs_per_model({pid: cmdline})[model]:
            return pid
    raise AssertionError(f"no stub process for {model}")


class Load:
    """`clients` threads asking in a loop; records (time, outcome, message)."""

    def __init__(self, server, clients: int = 3, max_tokens: int = 16):
        self.server, self.clients, self.max_tokens = server, clients, max_tokens
        self.results: list[tuple[float, str, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        with RagClient(self.server.grpc_url, protocol="grpc", timeout_s=120) as client:
            while not self._stop.is_set():
                try:
                    client.ask(QUESTION, max_tokens=self.max_tokens, top_k=3)
                    self.results.append((time.monotonic(), "ok", ""))
                except RagError as exc:
                    self.results.append((time.monotonic(), "error", str(exc)))
                    time.sleep(0.2)

    def __enter__(self):
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join(timeout=180)


def wait_ready(server, timeout_s: float = 180) -> float:
    started = time.monotonic()
    while not server.is_ready():
        assert time.monotonic() - started < timeout_s, server.log_tail()
        time.sleep(0.2)
    return time.monotonic() - started


@pytest.mark.parametrize("model", ["generator_stream", "generator"])
def test_killed_generator_stub_is_recovered_and_readiness_tells_the_truth(fault_server, report_figure, model):
    """generator_stream holds the decode engine; generator is the forwarder in front of it
    (rows over a local socket, tritonrag/serving/engine_link.py).

    Killing the engine's stub: the forwarder's rows fail at once, the supervisor reloads that
    model, and the forwarder dials the new engine. Killing a forwarder's stub: reloaded too,
    or, if Triton cannot unload it (rag_bls's BLS calls to it stranded), the server restarts
    after `unload_timeout_s`. Either way only requests around the outage fail.
    """
    server = fault_server
    wait_ready(server)
    with RagClient(server.grpc_url, protocol="grpc") as client:
        assert client.ask(QUESTION, max_tokens=4, top_k=3).answer
    recoveries_before = recovered(server)
    stuck_before = server.supervisor.count("unload-stuck")
    with Load(server) as load:
        time.sleep(3)
        killed_at = time.monotonic()
        os.kill(stub_pid(server, model), signal.SIGKILL)
        readiness, deadline = [], time.monotonic() + 150
        while time.monotonic() < deadline:  # until a recovery has finished and the server is ready
            readiness.append((time.monotonic(), server.is_ready()))
            if readiness[-1][1] and recovered(server) > recoveries_before:
                break
            time.sleep(0.1)
        back = readiness[-1][0]
        restarted = server.supervisor.count("unload-stuck") > stuck_before
        if restarted:   # new server process: the clients' gRPC channels redial with backoff (seconds)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(kind == "ok" and t > back for t, kind, _ in load.results):
                time.sleep(0.2)
        time.sleep(3)
    assert recovered(server) > recoveries_before, server.supervisor.events
    down = [t for t, ready in readiness if not ready]
    assert down, "readiness never reported the generator's absence"
    errors = [(t, msg) for t, kind, msg in load.results if kind == "error"]
    # errors only around the outage; answers again afterwards. After a server restart a client's
    # channel may still be backing off from the dead server's port for a while: its "failed to
    # connect" is the client's, not the server's (as in test_killed_server_is_restarted_on_the_same_ports)
    redial = ("failed to connect", "Connection refused", "Socket closed", "Stream removed")
    late = [(round(t - back, 2), m[:160]) for t, m in errors
            if t >= back + 1.0 and not (restarted and any(r in m for r in redial))]
    assert not late, (round(back - killed_at, 2), late[:5])
    assert any(kind == "ok" and t > back for t, kind, _ in load.results)
    with RagClient(server.grpc_url, protocol="grpc") as client:
        assert client.ask(QUESTION, max_tokens=4, top_k=3).answer
    how = "server restarted" if restarted else "model reloaded"
    report_figure(f"{model} stub killed ({how}): not ready after {down[0] - killed_at:.2f} s, ready again after "
                  f"{back - killed_at:.2f} s, {len(errors)} failed of {len(load.results)} (3 clients retrying "
                  f"every 0.2 s); messages: {sorted({m[:80] for _, m in errors})[:3]}")


def recovered(server) -> int:
    """Recoveries the supervisor has finished so far."""
    return server.supervisor.count("model-reload-done") + server.supervisor.count("server-restart-done")


def test_killed_server_is_restarted_on_the_same_ports(fault_server, report_figure):
    server = fault_server
    old_pid = server.process.pid
    restarts_before = server.supervisor.count("server-restart")
    with Load(server) as load:
        time.sleep(3)
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        time.sleep(0.3)
        assert not server.is_ready()
        recovery = wait_ready(server) + 0.3
        # the clients' gRPC channels redial with exponential backoff (seconds, after a long
        # outage): wait for their first answer rather than a fixed time
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
                kind == "ok" and t > killed_at + recovery for t, kind, _ in load.results):
            time.sleep(0.2)
    assert server.process.pid != old_pid
    assert server.supervisor.count("server-restart") == restarts_before + 1
    assert not any(child_processes(old_pid))  # no orphaned stubs of the old server
    errors = [msg for _, kind, msg in load.results if kind == "error"]
    ok_after = [t for t, kind, _ in load.results if kind == "ok" and t > killed_at + recovery]
    assert ok_after, ("no request answered after the restart", recovery, sorted({m[:120] for m in errors}), load.results[-3:])
    # in flight when the server died -> the stream is cut; sent while it is down -> refused
    in_flight = [m for m in errors if "Socket closed" in m or "Stream removed" in m]
    refused = [m for m in errors if "Connection refused" in m or "failed to connect" in m]
    assert len(in_flight) + len(refused) == len(errors), sorted(set(errors))
    assert len(in_flight) <= load.clients
    with RagClient(server.grpc_url, protocol="grpc") as client:
        assert client.ask(QUESTION, max_tokens=4, top_k=3).answer
    report_figure(f"server killed: ready again after: {recovery:.1f} s")
    report_figure(f"server killed: {len(in_flight)} in-flight requests cut, {len(refused)} refused while down "
                  f"(3 clients retrying every 0.2 s), {len(ok_after)} answered after")
