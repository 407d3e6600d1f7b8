"""Faults under load: a model's stub process killed, the whole server killed, a stub or the
server hung (SIGSTOP).

Only in-flight requests may fail, with clear errors; readiness says "not ready" while a
part is down; the supervisor (tritonrag.server.supervisor) restarts the server and requests succeed.
These tests kill processes, so they run their own server, not the session one; each test
gets a fresh supervisor, so its recovery budget does not depend on the tests before it.
"""

import os
import signal
import threading
import time

import pytest

from tritonrag.server.launcher import ServerSettings, TritonServer
from tritonrag.server.supervisor import Supervisor, SupervisorPolicy, child_processes, stubs_per_model
from tritonrag_client import RagClient, RagError

from .conftest import free_ports

pytestmark = pytest.mark.integration

QUESTION = "What does the with statement do?"


# hang bounds short enough for a test; the defaults leave more room for a full queue
POLICY = SupervisorPolicy(probe_timeout_s=3.0, probe_failures=2, canary_interval_s=2.0, hang_s=15.0)


@pytest.fixture(scope="module")
def module_server(tmp_path_factory):
    http, grpc, metrics = free_ports(3)
    settings = ServerSettings(http_port=http, grpc_port=grpc, metrics_port=metrics,  # pydoc corpus, cached index
                              supervision=POLICY)
    with TritonServer(settings, run_dir=tmp_path_factory.mktemp("faults")) as server:
        yield server


@pytest.fixture
def fault_server(module_server):
    """The module's server, ready, under a new supervisor (a budget of its own)."""
    server = module_server
    server.supervisor.stop()
    if server.process.poll() is not None or not server.is_ready():
        server.relaunch(grace_s=5.0)
    server.supervisor = Supervisor(server, POLICY)
    server.supervisor.start()
    return server


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

    Killing either stub: the supervisor restarts the server (one recovery), and only requests
    around the outage fail.
    """
    server = fault_server
    wait_ready(server)
    with RagClient(server.grpc_url, protocol="grpc") as client:
        assert client.ask(QUESTION, max_tokens=4, top_k=3).answer
    recoveries_before = recovered(server)
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
        # new server process: the clients' gRPC channels redial with exponential backoff (up to tens
        # of seconds after an outage as long as a restart on 2 CPU cores)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(kind == "ok" and t > back for t, kind, _ in load.results):
            time.sleep(0.2)
        time.sleep(3)
    assert recovered(server) == recoveries_before + 1, server.supervisor.events
    assert server.supervisor.count("server-restart") == 1, server.supervisor.events   # one incident, one recovery
    down = [t for t, ready in readiness if not ready]
    assert down, "readiness never reported the generator's absence"
    errors = [(t, msg) for t, kind, msg in load.results if kind == "error"]
    # errors only around the outage; answers again afterwards. After a server restart a client's
    # channel may still be backing off from the dead server's port for a while: its "failed to
    # connect" is the client's, not the server's (as in test_killed_server_is_restarted_on_the_same_ports)
    redial = ("failed to connect", "Connection refused", "Socket closed", "Stream removed")
    late = [(round(t - back, 2), m[:160]) for t, m in errors
            if t >= back + 1.0 and not any(r in m for r in redial)]
    assert not late, (round(back - killed_at, 2), late[:5])
    assert any(kind == "ok" and t > back for t, kind, _ in load.results)
    with RagClient(server.grpc_url, protocol="grpc") as client:
        assert client.ask(QUESTION, max_tokens=4, top_k=3).answer
    report_figure(f"{model} stub killed (server restarted): not ready after {down[0] - killed_at:.2f} s, ready again after "
                  f"{back - killed_at:.2f} s, {len(errors)} failed of {len(load.results)} (3 clients retrying "
                  f"every 0.2 s); messages: {sorted({m[:80] for _, m in errors})[:3]}")


def recovered(server) -> int:
    """Recoveries the supervisor has finished so far."""
    return server.supervisor.count("server-restart-done")


def test_killed_server_is_restarted_on_the_same_ports(fault_server, report_figure):
    server = fault_server
    old_pid = server.process.pid
    with Load(server) as load:
        time.sleep(3)
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        time.sleep(0.3)
        assert not server.is_ready()
        recovery = wait_ready(server) + 0.3
        # the clients' gRPC channels redial with exponential backoff (seconds, after a long
        # outage): wait for their first answer rather than a fixed time
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                kind == "ok" and t > killed_at + recovery for t, kind, _ in load.results):
            time.sleep(0.2)
    assert server.process.pid != old_pid
    assert server.supervisor.count("server-restart") == 1, server.supervisor.events   # one incident, one recovery
    assert not server.supervisor.failed.is_set()
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


@pytest.mark.parametrize("target", ["generator_stream", "tritonserver"])
def test_a_hung_stub_or_server_is_noticed_and_restarted(fault_server, report_figure, target):
    """SIGSTOP: the process exists but answers nothing. A stopped stub leaves the canary request
    unanswered; a stopped server answers no liveness probe. Either way: one restart, answers again."""
    server = fault_server
    wait_ready(server)
    old_pid = server.process.pid
    pid = old_pid if target == "tritonserver" else stub_pid(server, target)
    stopped_at = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = stopped_at + POLICY.hang_s + POLICY.canary_interval_s + 120
        while server.supervisor.count("server-restart-done") == 0:
            assert time.monotonic() < deadline, (server.supervisor.events, server.log_tail())
            assert not server.supervisor.failed.is_set(), server.supervisor.events
            time.sleep(0.2)
        noticed = next(t for t, kind, _ in server.supervisor.events if kind == "server-restart") - stopped_at
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert server.process.pid != old_pid
    assert server.supervisor.count("server-restart") == 1, server.supervisor.events
    reason = server.supervisor.events[0][2]
    assert ("liveness" in reason) if target == "tritonserver" else ("unanswered" in reason), reason
    bound = (POLICY.probe_timeout_s + POLICY.interval_s) * POLICY.probe_failures + 4 if target == "tritonserver" else \
        POLICY.hang_s + POLICY.canary_interval_s + 2
    assert noticed < bound, (noticed, reason)
    wait_ready(server)
    with RagClient(server.grpc_url, protocol="grpc") as client:
        assert client.ask(QUESTION, max_tokens=4, top_k=3).answer
    report_figure(f"{target} stopped (SIGSTOP): noticed after {noticed:.1f} s ({reason}), restarted")
