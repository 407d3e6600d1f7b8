"""What the running server exposes: admin APIs refused without the key, loopback only, no questions in its log."""

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

from tritonrag.server.launcher import ADMIN_HEADER

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


@pytest.mark.parametrize("method, path", HTTP_ADMIN)
def test_http_admin_api_is_refused_without_the_key(server, method, path):
    status, body = http_call(server, method, path)
    assert status == 403, body
    assert f"This API is restricted, expecting header '{ADMIN_HEADER}'" in body
    status, body = http_call(server, method, path, {ADMIN_HEADER: "not-the-key"})
    assert status == 403, body


@pytest.mark.parametrize("method, path", HTTP_ADMIN)
def test_http_admin_api_works_with_the_key(server, method, path):
    status, body = http_call(server, method, path, server.admin_headers("http"))
    assert status == 200, body
    if path == "/v2/repository/index":
        assert {m["name"] for m in json.loads(body)} >= {"embedder", "retriever", "generator", "rag_ensemble"}


@pytest.mark.parametrize("call", GRPC_ADMIN)
def test_grpc_admin_api_is_refused_without_the_key(grpc_client, server, call):
    for headers in (None, {"triton-grpc-protocol-" + ADMIN_HEADER: "not-the-key"},
                    server.admin_headers("http")):  # the HTTP header name is not the gRPC one
        with pytest.raises(InferenceServerException, match="This protocol is restricted, expecting header"):
            getattr(grpc_client, call)(headers=headers)


@pytest.mark.parametrize("call", GRPC_ADMIN)
def test_grpc_admin_api_works_with_the_key(grpc_client, server, call):
    result = getattr(grpc_client, call)(headers=server.admin_headers("grpc"), as_json=True)
    if call == "get_model_repository_index":
        assert {m["name"] for m in result["models"]} >= {"embedder", "retriever", "generator"}
    if call == "get_log_settings":
        assert "log_verbose_level" in result["settings"]


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
