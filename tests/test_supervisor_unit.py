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
    """Just enough of TritonServer for Supervisor._check_once: a live process and its stubs."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        self.relaunched = 0

    def relaunch(self, grace_s: float = 30.0) -> None:
        self.relaunched += 1


@pytest.mark.parametrize("dead, restart_for, expected", [
    ("generator_stream", ("generator_stream",), "server-restart"),   # a decoupled-BLS target, if so configured
    ("generator_stream", None, "model-reload"),                      # default: the engine link redials
    ("embedder", ("generator_stream",), "model-reload")])
def test_a_dead_bls_target_restarts_the_server_other_stubs_are_reloaded(monkeypatch, dead, restart_for, expected):
    from tritonrag.server.supervisor import Supervisor, SupervisorPolicy

    server = _FakeServer()
    try:
        policy = SupervisorPolicy() if restart_for is None else SupervisorPolicy(restart_server_for=restart_for)
        supervisor = Supervisor(server, policy)
        supervisor.expected = collections.Counter({"generator_stream": 1, "embedder": 1, "generator": 2})
        alive = {"generator_stream": 1, "embedder": 1, "generator": 2, dead: 0}
        monkeypatch.setattr(supervisor, "_stub_counts", lambda: collections.Counter(alive))
        reloaded = []
        monkeypatch.setattr(supervisor, "_reload_model", reloaded.append)
        supervisor._check_once()
        assert [kind for _, kind, _ in supervisor.events] == [expected, f"{expected}-done"]
        assert (server.relaunched, reloaded) == ((1, []) if expected == "server-restart" else (0, [dead]))
    finally:
        server.process.kill()
        server.process.wait()
