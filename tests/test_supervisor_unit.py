"""The supervisor's view of processes, and the queue-limit rendering, without a server."""

import collections
import os
import subprocess
import sys

import pytest

from tritonrag.cli import _model_values
from tritonrag.server.repository import SOURCE_REPOSITORY, render_repository, set_queue_policy
from tritonrag.server.supervisor import child_processes, stubs_per_model


def test_child_processes_sees_live_children_only():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()  # reaped: gone from /proc
    try:
        children = child_processes(os.getpid())
        assert sleeper.pid in children and done.pid not in children
        assert b"time.sleep(30)" in children[sleeper.pid]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stub_command_lines_are_counted_per_model():
    stub = b"/x/backends/python/triton_python_backend_stub\x00"
    children = {
        1: stub + b"/run/model_repository/generator/1/model.py\x00triton_python_backend_shm_region_a\x001048576\x00",
        2: stub + b"/run/model_repository/embedder/1/model.py\x00shm_b\x00",
        3: stub + b"/run/model_repository/embedder/1/model.py\x00shm_c\x00",  # a second instance
        4: b"/usr/bin/python3\x00/run/model_repository/generator/1/model.py\x00",  # not a stub
    }
    assert stubs_per_model(children) == {"generator": 1, "embedder": 2}


def test_queue_policy_is_rendered_per_model(tmp_path):
    repo = render_repository(tmp_path / "repo", {}, max_queue={"generator": 128}, queue_timeout_s={"generator": 2.5})
    text = (repo / "generator" / "config.pbtxt").read_text()
    assert "max_queue_size: 128" in text and "default_timeout_microseconds: 2500000" in text
    source = (SOURCE_REPOSITORY / "embedder" / "config.pbtxt").read_text()
    assert (repo / "embedder" / "config.pbtxt").read_text() == source
    with pytest.raises(KeyError, match="no model"):
        render_repository(tmp_path / "repo2", {}, max_queue={"genrator": 1})
    with pytest.raises(KeyError, match="0 max_queue_size"):
        set_queue_policy("dynamic_batching { }", max_queue_size=4)


def test_every_stage_has_a_bounded_rejecting_queue():
    for model in ("embedder", "retriever", "generator"):
        text = (SOURCE_REPOSITORY / model / "config.pbtxt").read_text()
        assert "timeout_action: REJECT" in text and "max_queue_size:" in text, model
        assert "max_queue_size: 0" not in text  # 0 would mean unbounded


def test_model_values_from_options_or_environment(monkeypatch):
    assert _model_values(["generator=64", "embedder=8"], "X", int) == {"generator": 64, "embedder": 8}
    monkeypatch.setenv("TRITONRAG_MAX_QUEUE", "generator=32, retriever=4")
    assert _model_values(None, "TRITONRAG_MAX_QUEUE", int) == {"generator": 32, "retriever": 4}
    with pytest.raises(SystemExit, match="MODEL=VALUE"):
        _model_values(["generator"], "X", int)
    with pytest.raises(SystemExit, match="not a valid number"):
        _model_values(["generator=lots"], "X", int)


class _FakeServer:
    """Just enough of TritonServer for Supervisor._check_once: a process (alive or not) and relaunch()."""

    http_url = "127.0.0.1:9"   # probes are replaced in these tests

    def __init__(self, alive: bool = True):
        self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)" if alive else "pass"])
        if not alive:
            self.process.wait()
        self.relaunched = 0

    def relaunch(self, grace_s: float = 30.0) -> None:
        self.relaunched += 1


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake():
    servers = []

    def make(alive=True):
        servers.append(_FakeServer(alive))
        return servers[-1]
    yield make
    for server in servers:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def _supervisor(monkeypatch, server, alive_stubs, answers=True, **policy):
    from tritonrag.server.supervisor import Supervisor, SupervisorPolicy

    clock = _Clock()
    supervisor = Supervisor(server, SupervisorPolicy(canary_model=None, **policy), clock=clock)
    supervisor.expected = collections.Counter({"generator_stream": 1, "embedder": 1, "generator": 2, "rag_bls": 8})
    monkeypatch.setattr(supervisor, "_stub_counts", lambda: collections.Counter(alive_stubs))
    monkeypatch.setattr(supervisor, "_server_answers", lambda: answers)
    return supervisor, clock


ALL_STUBS = {"generator_stream": 1, "embedder": 1, "generator": 2, "rag_bls": 8}


@pytest.mark.parametrize("dead", ["generator_stream", "embedder", "rag_bls"])
def test_a_dead_stub_restarts_the_server_once(monkeypatch, fake, dead):
    server = fake()
    supervisor, _ = _supervisor(monkeypatch, server, {**ALL_STUBS, dead: 0})
    supervisor._check_once()
    assert [kind for _, kind, _ in supervisor.events] == ["server-restart", "server-restart-done"]
    assert server.relaunched == 1


def test_a_server_killed_while_its_stubs_are_counted_is_one_incident(monkeypatch, fake):
    """The server dies between the first look at it and the stub count: its stubs vanish with it.
    That is one incident, the server's death: one restart, nothing tried against the dead server."""
    server = fake()
    supervisor, _ = _supervisor(monkeypatch, server, {})

    def counts_as_the_server_dies():
        server.process.kill()
        server.process.wait()
        return collections.Counter()
    monkeypatch.setattr(supervisor, "_stub_counts", counts_as_the_server_dies)
    monkeypatch.setattr(supervisor, "_restart_server", lambda: setattr(server, "relaunched", server.relaunched + 1))
    supervisor._check_once()
    assert [kind for _, kind, _ in supervisor.events] == ["server-restart", "server-restart-done"]
    assert "exited" in supervisor.events[0][2] and server.relaunched == 1


def test_a_server_that_answers_no_probe_is_restarted(monkeypatch, fake):
    server = fake()
    supervisor, _ = _supervisor(monkeypatch, server, ALL_STUBS, answers=False, probe_failures=2)
    supervisor._check_once()
    assert server.relaunched == 0     # one unanswered probe is not yet a hang
    supervisor._check_once()
    assert server.relaunched == 1 and "liveness" in supervisor.events[0][2]


def test_an_unanswered_canary_is_a_hung_stub(monkeypatch, fake):
    server = fake()
    supervisor, clock = _supervisor(monkeypatch, server, ALL_STUBS, hang_s=30.0)
    supervisor.policy.canary_model = "rag_bls"
    supervisor._canary_sent = clock.now
    clock.now += 29.0
    supervisor._check_once()
    assert server.relaunched == 0
    clock.now += 2.0
    supervisor._check_once()
    assert server.relaunched == 1 and "unanswered" in supervisor.events[0][2]
    assert supervisor._canary_sent is None    # the new server's canary starts afresh


def test_give_up_after_max_recoveries_in_the_window(monkeypatch, fake):
    server = fake(alive=False)        # a server that dies again at once
    supervisor, clock = _supervisor(monkeypatch, server, {},
                                    max_recoveries=3, window_s=100.0)
    for _ in range(3):
        supervisor._check_once()
        clock.now += 30.0
    assert server.relaunched == 3 and not supervisor.failed.is_set()
    supervisor._check_once()          # a 4th incident 90 s after the first: give up
    assert server.relaunched == 3 and supervisor.failed.is_set()
    assert supervisor.events[-1][1] == "gave-up"


def test_old_recoveries_leave_the_window(monkeypatch, fake):
    server = fake(alive=False)
    supervisor, clock = _supervisor(monkeypatch, server, {},
                                    max_recoveries=3, window_s=100.0)
    for _ in range(5):
        supervisor._check_once()
        clock.now += 40.0             # never more than 3 within 100 s
    assert server.relaunched == 5 and not supervisor.failed.is_set()


def test_failed_restarts_count_toward_giving_up(monkeypatch, fake):
    server = fake(alive=False)
    supervisor, clock = _supervisor(monkeypatch, server, {}, max_recoveries=2)

    def broken():
        raise RuntimeError("tritonserver exited with code 1")
    monkeypatch.setattr(supervisor, "_restart_server", broken)
    for _ in range(3):
        supervisor._check_once()
        clock.now += 1.0
    kinds = [kind for _, kind, _ in supervisor.events]
    assert kinds == ["server-restart", "server-restart-failed"] * 2 + ["gave-up"]
    assert supervisor.failed.is_set()


@pytest.mark.parametrize("answer, restarts", [
    ((500, b'{"error":"Failed to process the request(s) for model \'rag_bls_0_3\', message: Stub process '
           b'\'rag_bls_0_3\' is not healthy."}'), 1),
    ((503, b'{"error":"Exceeds maximum queue size"}'), 0),     # overloaded, but it answers
    ((200, b'{"outputs":[]}'), 0),
])
def test_the_canary_tells_a_broken_stub_from_an_answer(monkeypatch, fake, answer, restarts):
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(answer[0])
            self.send_header("Content-Length", str(len(answer[1])))
            self.end_headers()
            self.wfile.write(answer[1])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    server = fake()
    server.http_url = f"127.0.0.1:{httpd.server_address[1]}"
    supervisor, _ = _supervisor(monkeypatch, server, ALL_STUBS, canary_interval_s=0.05)
    supervisor.policy.canary_model = "rag_bls"
    canary = threading.Thread(target=supervisor._canary_loop, daemon=True)
    canary.start()
    try:
        import time
        time.sleep(1.0)                 # several canaries answered
        supervisor._check_once()
    finally:
        supervisor._stop.set()
        canary.join(timeout=5)
        httpd.shutdown()
    assert server.relaunched == restarts, supervisor.events
