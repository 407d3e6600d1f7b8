"""What the running server exposes: admin APIs locked with no key, no model upload, no secret in any
process's argv or environment, loopback only, no questions in its log."""

import base64
import json
import socket
import subprocess
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tritonrag.server.launcher import ServerSettings, TritonServer
from tritonrag.server.supervisor import child_processes

from .conftest import free_ports

pytestmark = pytest.mark.integration

# (method, path) of one call of each restricted admin API over HTTP
HTTP_ADMIN = [
    ("POST", "/v2/repository/index"),
    ("GET", "/v2/logging"),
    ("GET", "/v2/trace/setting"),
    ("GET", "/v2/systemsharedmemory/status"),
    ("GET", "/v2/cudasharedmemory/status"),
]
GRPC_ADMIN = ["get_model_repository_index", "get_log_settings", "get_trace_settings",
              "get_system_shared_memory_status", "get_cuda_shared_memory_status"]


def http_call(server, method: str, path: str, headers: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{server.http_url}{path}", method=method, headers=headers or {},
                                     data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# headers that a leaked key of the old launcher would have been sent under
GUESSES = [{}, {"tritonrag-admin-key": "not-the-key"}, {"tritonrag-locked": ""}]


@pytest.mark.parametrize("method, path", HTTP_ADMIN)
def test_http_admin_api_is_refused(server, method, path):
    for headers in GUESSES:
        status, body = http_call(server, method, path, headers)
        assert status == 403, body
        assert "This API is restricted" in body


@pytest.mark.parametrize("call", GRPC_ADMIN)
def test_grpc_admin_api_is_refused(grpc_client, server, call):
    for headers in GUESSES:
        with pytest.raises(InferenceServerException, match="This protocol is restricted, expecting header"):
            getattr(grpc_client, call)(headers={"triton-grpc-protocol-" + k: v for k, v in headers.items()} or None)


def upload_request(server, name: str, marker, headers: dict) -> urllib.request.Request:
    """Repository load with a model file override (the CVE-2023-31036 class): a model.py that
    would write `marker` as the service when it loads."""
    source = f"open({str(marker)!r}, 'w').write('ran')\nclass TritonPythonModel:\n    def execute(self, r):\n        return []\n"
    config = {"name": name, "backend": "python", "max_batch_size": 0,
              "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
              "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}]}
    body = json.dumps({"parameters": {"config": json.dumps(config),
                                      "file:1/model.py": base64.b64encode(source.encode()).decode()}}).encode()
    return urllib.request.Request(f"http://{server.http_url}/v2/repository/models/{name}/load", data=body,
                                  method="POST", headers={"Content-Type": "application/json", **headers})


def refused_upload(server, marker, headers: dict) -> int:
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(upload_request(server, "uploaded", marker, headers), timeout=120)
    assert not marker.exists()
    status, _ = http_call(server, "GET", "/v2/models/uploaded/ready")
    assert status != 200
    return refused.value.code


def test_a_model_upload_is_refused(server, tmp_path):
    for headers in GUESSES:
        assert refused_upload(server, tmp_path / "ran", headers) == 403


@pytest.fixture(scope="module")
def open_repository_server(server, tmp_path_factory):
    """A server whose operator opened the repository API to anyone (`--allow-admin-api model-repository`)."""
    http, grpc, metrics = free_ports(3)
    settings = ServerSettings(http_port=http, grpc_port=grpc, metrics_port=metrics, index=server.index_path,
                              open_apis={"model-repository"}, supervise=False)
    with TritonServer(settings, run_dir=tmp_path_factory.mktemp("open-repo")) as running:
        yield running


def test_no_model_can_be_loaded_even_with_the_repository_api_open(open_repository_server, tmp_path):
    server = open_repository_server
    assert refused_upload(server, tmp_path / "ran", {}) == 503   # Triton: no load in model control "none"
    status, body = http_call(server, "POST", "/v2/repository/models/embedder/unload")
    assert status != 200, body
    status, _ = http_call(server, "GET", "/v2/models/embedder/ready")
    assert status == 200


def test_no_process_of_the_server_holds_a_key(server):
    """argv and environment of tritonserver and of every stub: no admin key, no restriction value
    anyone could send."""
    pids = [server.process.pid, *child_processes(server.process.pid)]
    assert len(pids) > 8   # the server and its stubs
    for pid in pids:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = handle.read().decode(errors="replace").split("\0")
        with open(f"/proc/{pid}/environ", "rb") as handle:
            environ = handle.read().decode(errors="replace").split("\0")
        assert not [a for a in args + environ if "admin-key" in a.lower() or "ADMIN_KEY" in a], pid
        for arg in args:
            if arg.startswith(("--http-restricted-api=", "--grpc-restricted-protocol=")):
                header = arg.split(":", 1)[1].split("=", 1)[0]
                assert "\n" in header, arg   # no client can send this header: there is no key


def test_serving_apis_stay_open(server, grpc_client):
    http = httpclient.InferenceServerClient(server.http_url)
    try:
        assert http.is_server_live() and http.is_server_ready() and http.is_model_ready("rag_retrieve")
        assert http.get_server_metadata()["name"] == "triton"
        assert http.get_model_config("retriever")["max_batch_size"] == 32
        assert http.get_inference_statistics("embedder")["model_stats"]
    finally:
        http.close()
    assert grpc_client.is_server_ready()
    assert grpc_client.get_model_metadata("rag_retrieve").name == "rag_retrieve"
    assert grpc_client.get_model_config("generator").config.max_batch_size == 32
    assert grpc_client.get_inference_statistics("retriever").model_stats
    q = grpcclient.InferInput("question", [1, 1], "BYTES")
    q.set_data_from_numpy(np.array([[b"What is a lambda?"]], dtype=np.object_))
    assert grpc_client.infer("rag_retrieve", [q], client_timeout=120).as_numpy("sources").shape == (1, 3)


def local_non_loopback_addresses() -> list[str]:
    found: set[str] = set()
    try:
        output = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10, check=False).stdout
        found.update(output.split())
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        found.update(info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET))
    except OSError:
        pass
    return sorted(a for a in found if "." in a and not a.startswith("127."))


def test_ports_are_bound_to_loopback_only(server):
    ports = [server.settings.http_port, server.settings.grpc_port, server.settings.metrics_port]
    for port in ports:  # reachable on loopback ...
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    addresses = local_non_loopback_addresses()
    if not addresses:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    for address in addresses:  # ... and not on this machine's other addresses
        for port in ports:
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=5).close()


def test_questions_never_reach_the_server_log(server, grpc_client):
    marker = f"zq{uuid.uuid4().hex}"
    question = f"What does the keyword {marker} do?".encode()

    def ask(model, q, **ints):
        built = grpcclient.InferInput("question", [1, 1], "BYTES")
        built.set_data_from_numpy(np.array([[q]], dtype=np.object_))
        tensors = [built]
        for name, value in ints.items():
            t = grpcclient.InferInput(name, [1, 1], "INT32")
            t.set_data_from_numpy(np.array([[value]], dtype=np.int32))
            tensors.append(t)
        try:
            return grpc_client.infer(model, tensors, client_timeout=300)
        except InferenceServerException as exc:
            return exc

    assert not isinstance(ask("rag_retrieve", question), Exception)
    assert not isinstance(ask("rag_ensemble", question, max_tokens=1), Exception)
    assert isinstance(ask("rag_retrieve", question, top_k=0), InferenceServerException)
    assert isinstance(ask("embedder", question + b"\xff"), InferenceServerException)
    assert isinstance(ask("rag_ensemble", question * 200, max_tokens=1), InferenceServerException)
    assert grpc_client.is_server_ready()
    log_text = server.log_path.read_text(errors="replace")
    assert "Started GRPCInferenceService" in log_text  # it is the server's log, and it is written
    assert marker not in log_text
