"""`tritonrag serve` as users run it: loopback by default, ready, clean stop on SIGTERM and Ctrl-C."""

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tritonrag.models import sources as model_sources

from .conftest import free_ports

pytestmark = pytest.mark.integration


def ready(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status == 200
    except OSError:
        return False


def tritonserver_pids(marker: str) -> list[int]:
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().decode(errors="replace")
        except OSError:
            continue
        if "tritonserver" in cmdline and marker in cmdline:
            pids.append(int(pid))
    return pids


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_binds_loopback_and_stops_cleanly_within_3_s(server, tmp_path, signum, report_figure):
    http, grpc, metrics = free_ports(3)
    command = [sys.executable, "-m", "tritonrag", "serve", "--index", str(server.index_path),
               "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ready(http):
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.5)
        port_marker = f"--http-port={http}"
        pids = tritonserver_pids(port_marker)
        assert len(pids) == 1
        with open(f"/proc/{pids[0]}/cmdline", "rb") as handle:
            args = handle.read().decode().split("\0")
        assert "--http-address=127.0.0.1" in args and "--grpc-address=127.0.0.1" in args
        log_path = model_sources.cache_dir() / "run" / str(http) / "tritonserver.log"
        assert log_path.exists()
        signalled = time.monotonic()
        process.send_signal(signum)
        code = process.wait(timeout=60)
        took = time.monotonic() - signalled
        output = process.stdout.read()
        assert code == 0, output
        assert took <= 3.0, (took, output[-2000:])
        assert not ready(http)
        assert tritonserver_pids(port_marker) == []
        log_text = log_path.read_text(errors="replace")
        assert "Waiting for in-flight requests to complete" in log_text   # Triton's own stop ran
        assert "Fatal Python error" not in log_text and "Segmentation fault" not in log_text, log_text[-3000:]
        report_figure(f"serve stopped by {signal.Signals(signum).name} in {took:.2f} s")
    finally:
        if process.poll() is None:
            process.kill()
