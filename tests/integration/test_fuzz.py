"""Hostile input against a live server: every public model and input, several concurrent
clients (gRPC, gRPC streams and HTTP), liveness after every example; the HTTP port at the
protocol level; and a memory-growth check that must flag a leaking model and not the real ones.

Seeded: the run prints its seed; `TRITONRAG_FUZZ_SEED=N` replays the same examples (each
worker draws from its own `random.Random(f"{seed}-{worker}")`), `TRITONRAG_FUZZ_EXAMPLES`
sets how many (default 5,000).

Every request must get an answer within the client timeout: a result, or an error with a
message; never INTERNAL / HTTP 500 (tests/integration/fuzz_cases.py says what each case
expects). After every example the server is ready and a known-good request is answered.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import random
import re
import secrets
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tritonrag.server.launcher import ServerSettings, TritonServer, free_ports
from tritonrag.index.synthetic import make_facts, write_facts

from . import fuzz_cases as fc

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "perf"))
from loadgen import peak_growth, tree_rss_bytes  # noqa: E402

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("TRITONRAG_FUZZ_SEED") or secrets.randbits(32))
EXAMPLES = int(os.environ.get("TRITONRAG_FUZZ_EXAMPLES") or 5000)
# (protocol, count): plain gRPC and gRPC stream share a client; decoupled models only over a stream
WORKERS = ("grpc", "grpc", "http", "http")
TIMEOUT_S = 120  # a hang is a failure; generous because the CPU may be shared
MAX_GROWTH = 1.10  # the overload test's rule (perf/loadgen.peak_growth)
LEAK_BYTES = 512 * 1024
CRASH_WORDS = ("not healthy", "Stub process", "Socket closed", "failed to connect", "Deadline Exceeded")
GOOD_QUESTION = b"What is a lambda?"

# A model that keeps LEAK_BYTES of every request: the memory check's negative control. It lives
# only in the test's rendered repository, never in the package's.
LEAKY_CONFIG = """name: "leaky"
backend: "python"
max_batch_size: 8
input [ { name: "x", data_type: TYPE_INT32, dims: [ 1 ] } ]
output [ { name: "y", data_type: TYPE_INT32, dims: [ 1 ] } ]
instance_group [ { count: 1, kind: KIND_CPU } ]
"""
LEAKY_MODEL = f"""import os
import sys

# as the package's models: the stub ignores PYTHONPATH, numpy comes from the launcher's paths
sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in sys.path]

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.kept = []

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "x").as_numpy()
            self.kept.append(b"\\x01" * {LEAK_BYTES})  # written bytes: resident, never freed
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("y", x.astype(np.int32))]))
        return responses
"""


class LeakyRepositoryServer(TritonServer):
    """The package's repository plus the leaking model, rendered into the run folder."""

    def prepare(self) -> list[str]:
        command = super().prepare()
        leaky = self.run_dir / "model_repository" / "leaky"
        (leaky / "1").mkdir(parents=True)
        (leaky / "config.pbtxt").write_text(LEAKY_CONFIG)
        (leaky / "1" / "model.py").write_text(LEAKY_MODEL)
        return command


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Its own server with a small index (60 synthetic facts), so that searches stay cheap."""
    work = tmp_path_factory.mktemp("fuzz")
    write_facts(make_facts(fc.INDEX_ROWS, seed=7), work / "facts.jsonl")
    http, grpc, metrics = free_ports(3)
    settings = ServerSettings(http_port=http, grpc_port=grpc, metrics_port=metrics, corpus=[str(work / "facts.jsonl")],
                              index=work / "index", build_index=True, max_queue={"generator": 64})
    with LeakyRepositoryServer(settings, run_dir=work / "run") as running:
        yield running
    print(running.log_tail(30))


# ---- sending one case over gRPC, a gRPC stream or HTTP; the outcome as (status, message, output shapes)


def grpc_tensor(t: fc.Tensor) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(t.name, t.shape, t.datatype)
    tensor._raw_content = t.raw  # bypass the client's own checks: the server must do them
    return tensor


class GrpcSender:
    def __init__(self, url: str):
        self.client = grpcclient.InferenceServerClient(url)
        self.replies: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.replies.put((result, error)))

    def send(self, case: fc.Case):
        inputs = [grpc_tensor(t) for t in case.inputs]
        outputs = [grpcclient.InferRequestedOutput(n) for n in case.outputs] if case.outputs else None
        if case.stream:
            return self._stream(case, inputs, outputs)
        try:
            result = self.client.infer(case.model, inputs, outputs=outputs, client_timeout=TIMEOUT_S)
        except InferenceServerException as exc:
            return exc.status().replace("StatusCode.", ""), exc.message() or "", None
        shapes = {o.name: list(o.shape) for o in result.get_response().outputs}
        return "OK", "", shapes

    def _stream(self, case, inputs, outputs):
        request_id = secrets.token_hex(8)
        self.client.async_stream_infer(case.model, inputs, outputs=outputs, request_id=request_id,
                                       enable_empty_final_response=True)
        shapes = {}
        while True:
            try:
                result, error = self.replies.get(timeout=TIMEOUT_S)
            except queue.Empty:
                return "DEADLINE_EXCEEDED", "no final response on the stream", None
            if error is not None:
                # a stream's error carries its message only, not its code (KServe's ModelStreamInferResponse)
                return STREAM_ERROR, error.message() or "", None
            response = result.get_response()
            assert response.id == request_id, (response.id, request_id)
            shapes.update({o.name: list(o.shape) for o in response.outputs})
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                return "OK", "", shapes

    def alive(self) -> bool:
        return self.client.is_server_live() and self.client.is_server_ready()

    def close(self):
        self.client.stop_stream()
        self.client.close()


STREAM_ERROR = "STREAM_ERROR"
HTTP_STATUS = {200: "OK", 400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 500: "INTERNAL", 503: "UNAVAILABLE"}


class HttpSender:
    """KServe v2 over HTTP with the binary-data extension: the case's raw bytes as they are."""

    def __init__(self, url: str):
        self.host, self.port = url.split(":")
        self.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=TIMEOUT_S)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                reply = self.conn.getresponse()
                return reply.status, dict(reply.getheaders()), reply.read()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
                # the server may close a kept-alive connection; a second refusal is a failure
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=TIMEOUT_S)
                if attempt:
                    raise

    def send(self, case: fc.Case):
        header = {"inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape,
                              "parameters": {"binary_data_size": len(t.raw)}} for t in case.inputs]}
        if case.outputs:
            header["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in case.outputs]
        else:
            header["parameters"] = {"binary_data_output": True}
        head = json.dumps(header).encode()
        body = head + b"".join(t.raw for t in case.inputs)
        status, headers, reply = self.request("POST", f"/v2/models/{case.model}/infer", body,
                                              {"Inference-Header-Content-Length": str(len(head)),
                                               "Content-Type": "application/octet-stream"})
        name = HTTP_STATUS.get(status, f"HTTP {status}")
        if status != 200:
            try:
                return name, json.loads(reply)["error"], None
            except (ValueError, KeyError, TypeError):
                return name, reply.decode("utf-8", "replace"), None
        length = int({k.lower(): v for k, v in headers.items()}.get("inference-header-content-length", len(reply)))
        answer = json.loads(reply[:length])
        return "OK", "", {o["name"]: o["shape"] for o in answer["outputs"]}

    def alive(self) -> bool:
        return (self.request("GET", "/v2/health/live")[0] == 200
                and self.request("GET", "/v2/health/ready")[0] == 200)

    def close(self):
        self.conn.close()


# the known-good request after every example: a search (cheap, so that it can follow each one)
GOOD = fc.Case("liveness", "retriever", fc.good_inputs("retriever"), "ok",
               check=fc.shape_is("sources", 1, fc.LIMITS.default_top_k))
GOOD_PIPELINE = fc.Case("liveness", "rag_retrieve", [fc.text_tensor("question", [GOOD_QUESTION])], "ok",
                        check=fc.shape_is("sources", 1, fc.LIMITS.default_top_k))


# Triton 2.51's HTTP frontend answers JSON it cannot read (bad syntax, a negative shape value,
# a missing member) with 500 before any model sees the request: Triton's, not the service's (README)
TRITON_JSON_ERROR = re.compile(rb'^\{"error":"(failed to parse the request JSON buffer|Unable to parse )')


def judge(case: fc.Case, status: str, message: str, shapes) -> None:
    """Fail unless (status, message, shapes) is what the case may get."""
    if status == "INTERNAL" and TRITON_JSON_ERROR.match(b'{"error":"' + message.encode()) and case.expect == "refused":
        return
    assert status not in ("INTERNAL", "DEADLINE_EXCEEDED", "UNAVAILABLE"), (status, message)
    assert not status.startswith("HTTP 5"), (status, message)
    if status != "OK":
        assert message.strip(), f"empty error message ({status})"
        assert not any(word in message for word in CRASH_WORDS), message
        # the package words its INTERNAL errors so (tritonrag/triton_glue.py): on a stream, the only sign of one
        assert "internal error" not in message.lower(), (status, message)
    if case.expect == "ok" or (case.expect == "ok_or_invalid" and status == "OK"):
        assert status == "OK", (status, message)
        if case.check is not None:
            case.check(shapes)
    elif case.expect in ("invalid", "ok_or_invalid"):
        assert status in ("INVALID_ARGUMENT", STREAM_ERROR), (status, message)
        if case.message is not None:
            own = message.split(", ", 1)[1] if message.startswith("in ensemble '") else message
            assert own == case.message, (own, case.message)
    elif case.expect == "refused":  # refused by Triton's core: any clear refusal
        assert status != "OK", "accepted"
    # "any": Triton decides either way (an ensemble asked for some of its outputs only)


def run_worker(index: int, protocol: str, server, count: int, stats: dict, failures: list, stop: threading.Event,
               kinds=fc.KINDS):
    rng = random.Random(f"{SEED}-{index}")
    sender = GrpcSender(server.grpc_url) if protocol == "grpc" else HttpSender(server.http_url)
    try:
        for number in range(count):
            if stop.is_set():
                return
            case = fc.make_case(rng, kinds)
            while case.stream and protocol != "grpc":  # decoupled models answer on gRPC streams only
                case = fc.make_case(rng, kinds)
            where = f"seed {SEED} worker {index} ({protocol}) example {number}: {case.describe()[:600]}"
            started = time.monotonic()
            try:
                outcome = sender.send(case)
                stats["statuses"][outcome[0]] = stats["statuses"].get(outcome[0], 0) + 1
                judge(case, *outcome)
                stats["slowest_s"] = max(stats["slowest_s"], time.monotonic() - started)
                # liveness after every example: ready, and a known-good request answered
                assert sender.alive(), "server not live/ready"
                judge(GOOD, *sender.send(GOOD))
            except Exception as exc:  # noqa: BLE001 — reported with its seed, then the run stops
                failures.append(f"{where}\n  -> {type(exc).__name__}: {exc}")
                stop.set()
                return
            stats["examples"] += 1
            count, seconds = stats["kinds"].get(case.kind, (0, 0.0))
            stats["kinds"][case.kind] = (count + 1, round(seconds + time.monotonic() - started, 1))
    finally:
        sender.close()


def test_fuzz_every_model_concurrently(server, report_figure):
    print(f"fuzz seed {SEED} (replay: TRITONRAG_FUZZ_SEED={SEED}), {EXAMPLES} examples, workers {WORKERS}")
    stats = {"examples": 0, "statuses": {}, "kinds": {}, "slowest_s": 0.0}
    failures: list[str] = []
    stop = threading.Event()
    serial = EXAMPLES // 25  # cases that must not share a batch (fuzz_cases.SERIAL_KINDS), one client, first
    concurrent = EXAMPLES - serial
    per_worker = [concurrent // len(WORKERS) + (i < concurrent % len(WORKERS)) for i in range(len(WORKERS))]
    started = time.monotonic()
    run_worker(len(WORKERS), "grpc", server, serial // 2, stats, failures, stop, fc.SERIAL_KINDS)
    run_worker(len(WORKERS) + 1, "http", server, serial - serial // 2, stats, failures, stop, fc.SERIAL_KINDS)
    threads = [threading.Thread(target=run_worker, args=(i, p, server, n, stats, failures, stop), daemon=True)
               for i, (p, n) in enumerate(zip(WORKERS, per_worker))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    line = (f"fuzz: seed {SEED}, {stats['examples']} examples in {seconds:.0f} s from {len(WORKERS)} clients "
            f"({', '.join(WORKERS)}), liveness after each; statuses {dict(sorted(stats['statuses'].items()))}; "
            f"slowest {stats['slowest_s']:.1f} s; kinds (examples, s) {dict(sorted(stats['kinds'].items()))}")
    print(line)
    report_figure(line)
    assert not failures, "\n".join(failures)
    assert stats["examples"] == EXAMPLES


# ---- the HTTP port at the protocol level: raw bytes on a socket


def raw_exchange(server, payload: bytes, timeout_s: float = 20.0) -> bytes:
    host, port = server.http_url.split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close early on a huge request; its answer is still read
        reply = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            reply += chunk
    return reply


def infer_body(question: bytes = GOOD_QUESTION) -> tuple[bytes, int]:
    head = json.dumps({"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1, 1],
                                   "parameters": {"binary_data_size": 4 + len(question)}}]}).encode()
    return head + fc.serialize_bytes([question]), len(head)


def protocol_cases(rng: random.Random) -> list[tuple[str, bytes]]:
    body, head_len = infer_body()
    path = "/v2/models/embedder/infer"
    ok_headers = f"Host: x\r\nInference-Header-Content-Length: {head_len}\r\n"
    cases = [
        ("garbage line", b"\x00\xff\x13 garbage\r\n\r\n"),
        ("no version", b"GET /v2/health/ready\r\n\r\n"),
        ("bad version", b"GET /v2/health/ready HTTP/9.9\r\n\r\n"),
        ("bad method", b"FROB /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("huge path", b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("nul in path", b"GET /v2/models/emb\x00edder HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("traversal", b"GET /v2/models/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("header no colon", b"GET /v2/health/ready HTTP/1.1\r\nHost x\r\n\r\n"),
        ("huge header", b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 1_000_000 + b"\r\n\r\n"),
        ("many headers", b"GET /v2/health/ready HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(20_000))
         + b"\r\n"),
        ("binary header", b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-\xff\x00: \x01\x02\r\n\r\n"),
        ("negative length", f"POST {path} HTTP/1.1\r\n{ok_headers}Content-Length: -5\r\n\r\n".encode() + body),
        ("junk length", f"POST {path} HTTP/1.1\r\n{ok_headers}Content-Length: abc\r\n\r\n".encode() + body),
        ("huge length", f"POST {path} HTTP/1.1\r\n{ok_headers}Content-Length: 99999999999999999999\r\n\r\n".encode()
         + body),
        ("two lengths", f"POST {path} HTTP/1.1\r\n{ok_headers}Content-Length: 3\r\nContent-Length: {len(body)}\r\n\r\n"
         .encode() + body),
        ("short length", f"POST {path} HTTP/1.1\r\n{ok_headers}Content-Length: {len(body) - 7}\r\n\r\n".encode() + body),
        ("long length", f"POST {path} HTTP/1.1\r\n{ok_headers}Content-Length: {len(body) + 50}\r\n\r\n".encode() + body),
        ("no length", f"POST {path} HTTP/1.1\r\n{ok_headers}\r\n".encode() + body),
        ("bad chunk size", f"POST {path} HTTP/1.1\r\n{ok_headers}Transfer-Encoding: chunked\r\n\r\nzz\r\n".encode()
         + body + b"\r\n0\r\n\r\n"),
        ("chunk too long", f"POST {path} HTTP/1.1\r\n{ok_headers}Transfer-Encoding: chunked\r\n\r\n{len(body) + 99:x}"
         "\r\n".encode() + body + b"\r\n0\r\n\r\n"),
        ("chunk huge size", f"POST {path} HTTP/1.1\r\n{ok_headers}Transfer-Encoding: chunked\r\n\r\nffffffffffffffff"
         "\r\n".encode() + body + b"\r\n0\r\n\r\n"),
        ("chunk no end", f"POST {path} HTTP/1.1\r\n{ok_headers}Transfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n"
         .encode() + body),
        ("chunked and length", f"POST {path} HTTP/1.1\r\n{ok_headers}Content-Length: 4\r\nTransfer-Encoding: "
         f"chunked\r\n\r\n{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"),
        ("bad encoding", f"POST {path} HTTP/1.1\r\n{ok_headers}Transfer-Encoding: gzip, zork\r\nContent-Length: "
         f"{len(body)}\r\n\r\n".encode() + body),
    ]
    json_path = "/v2/models/rag_retrieve/infer"
    for label, document in [("bad json", b"{"), ("json list", b"[1,2]"), ("json nul", b'{"inputs": [\x00]}'),
                            ("deep json", b"[" * 100_000 + b"]" * 100_000), ("json number", b"1e999999"),
                            ("wrong types", b'{"inputs": [{"name": 1, "datatype": [], "shape": "x", "data": {}}]}'),
                            ("huge shape", b'{"inputs": [{"name": "question", "datatype": "BYTES", "shape": '
                             b'[4294967296, 4294967296], "data": ["a"]}]}'),
                            ("invalid utf8 json", b'{"inputs": [{"name": "question\xff", "datatype": "BYTES", '
                             b'"shape": [1, 1], "data": ["a"]}]}')]:
        cases.append((label, f"POST {json_path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(document)}\r\n\r\n"
                      .encode() + document))
    # binary-data extension: sizes that disagree with the bytes sent
    for label, (size, header_length) in {"binary too big": (10_000, head_len), "binary negative": (-4, head_len),
                                         "binary zero": (0, head_len), "header length past body": (8, 10**6),
                                         "header length zero": (8, 0), "header length junk": (8, "x"),
                                         "header length inside json": (8, head_len // 2)}.items():
        head = json.dumps({"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1, 1],
                                       "parameters": {"binary_data_size": size}}]}).encode()
        payload = head + fc.serialize_bytes([GOOD_QUESTION])
        cases.append((label, f"POST {path} HTTP/1.1\r\nHost: x\r\nInference-Header-Content-Length: {header_length}\r\n"
                      f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload))
    # seeded mutations of a good request: bytes flipped, cut or duplicated
    good = f"POST {path} HTTP/1.1\r\n{ok_headers}Content-Length: {len(body)}\r\n\r\n".encode() + body
    for i in range(60):
        data = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(data))
            action = rng.randrange(3)
            if action == 0:
                data[at] = rng.randrange(256)
            elif action == 1:
                del data[at:at + rng.randint(1, 20)]
            else:
                data[at:at] = data[at:at + rng.randint(1, 40)] * rng.randint(1, 5)
        cases.append((f"mutation {i}", bytes(data)))
    return cases


def test_fuzz_http_protocol(server, report_figure):
    """Malformed request lines, headers, lengths, chunked bodies, JSON and binary sizes: the
    server answers 4xx (or closes the connection) and stays alive; never a 5xx."""
    rng = random.Random(f"{SEED}-protocol")
    checker = HttpSender(server.http_url)
    answers: dict[str, int] = {}
    failures, triton_json_500 = [], 0
    for label, payload in protocol_cases(rng):
        reply = raw_exchange(server, payload)
        status_line = reply.split(b"\r\n", 1)[0]
        parts = status_line.split()
        status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
        answers[str(status)] = answers.get(str(status), 0) + 1
        if status is not None and status >= 500:
            if status == 500 and TRITON_JSON_ERROR.search(reply.split(b"\r\n\r\n", 1)[-1]):
                triton_json_500 += 1  # Triton's frontend refusing JSON it cannot read (README); counted
            else:
                failures.append(f"seed {SEED} {label}: {status_line!r} {reply[-300:]!r}")
        try:
            assert checker.alive(), "server not live/ready"
            judge(GOOD_PIPELINE, *checker.send(GOOD_PIPELINE))
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"seed {SEED} after {label!r} ({payload[:200]!r}): {type(exc).__name__}: {exc}")
    checker.close()
    line = (f"http protocol fuzz: seed {SEED}, {sum(answers.values())} raw requests, answers {answers} "
            f"(None: connection closed without an answer; {triton_json_500} of the 500s are Triton's JSON parse errors)")
    print(line)
    report_figure(line)
    assert not failures, "\n".join(failures)


# ---- memory growth, with a negative control


def stub_pids(server, model: str) -> list[int]:
    """The Python-backend stub processes of `model` (their command line names its model.py)."""
    marker = f"/{model}/1/model.py"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == server.process.pid and marker in cmdline and str(server.run_dir) in cmdline:
            pids.append(int(entry.name))
    return pids


def growth_under_load(read_rss, send, requests: int, warm_up: int = 10) -> tuple[float, int, int]:
    """(peak growth, first sample, last sample) of `read_rss` while `send(i)` runs `requests` times."""
    for i in range(warm_up):
        send(i)
    samples = []
    for i in range(requests):
        send(i)
        samples.append((float(i), read_rss()))
    return peak_growth(samples, float(requests - 1)), samples[0][1], samples[-1][1]


def test_memory_growth_flags_the_leak_and_not_the_real_models(server, report_figure):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    questions = [b"What is a lambda?", b"How do I open a file?", b"What is a decorator?", b"What does yield do?"]

    def rss_of(models):
        pids = [pid for m in models for pid in stub_pids(server, m)]
        assert pids, models
        return lambda: sum(tree_rss_bytes(pid) for pid in pids)

    def leaky(i):
        client.infer("leaky", [grpc_tensor(fc.int_tensor("x", [i]))], client_timeout=TIMEOUT_S)

    def pipeline(i):  # every Python model: rag_bls -> embedder, retriever (hybrid), generator -> generator_stream
        q = questions[i % len(questions)]
        inputs = [fc.text_tensor("question", [q]), fc.int_tensor("max_tokens", [1]), fc.int_tensor("top_k", [2])]
        result = client.infer("rag_bls", [grpc_tensor(t) for t in inputs], client_timeout=TIMEOUT_S)
        assert result.as_numpy("answer").shape == (1, 1)

    figures, flagged = [], {}
    leak = growth_under_load(rss_of(["leaky"]), leaky, 120)
    figures.append(f"leaky {leak[0]:.2f} ({leak[1] / 2**20:.0f} -> {leak[2] / 2**20:.0f} MiB)")
    real_models = ["rag_bls", "embedder", "retriever", "generator", "generator_stream"]
    readers = {m: rss_of([m]) for m in real_models}
    readers["tritonserver + stubs"] = lambda: tree_rss_bytes(server.process.pid)
    samples = {m: [] for m in readers}
    for i in range(10):
        pipeline(i)
    count = 60
    for i in range(count):
        pipeline(i)
        for name, read in readers.items():
            samples[name].append((float(i), read()))
    for name, values in samples.items():
        flagged[name] = peak_growth(values, float(count - 1))
        figures.append(f"{name} {flagged[name]:.3f} ({values[0][1] / 2**20:.0f} -> {values[-1][1] / 2**20:.0f} MiB)")
    client.close()
    line = f"memory growth (second-half peak / first-half peak, flagged at {MAX_GROWTH}): " + "; ".join(figures)
    print(line)
    report_figure(line)
    assert leak[0] >= MAX_GROWTH, f"the check missed a leak of {LEAK_BYTES} bytes per request: {line}"
    assert all(g < MAX_GROWTH for g in flagged.values()), line


# ---- regressions found by this fuzz


def test_rag_bls_refuses_a_question_too_long_for_the_prompt_alone(server):
    """Under the byte limit, over the generator's prompt: INVALID_ARGUMENT from rag_bls too (it
    was INTERNAL, and failed every request merged with it); its batch-mates are answered."""
    client = grpcclient.InferenceServerClient(server.grpc_url)
    long_question = fc.text_tensor("question", [b"word " * 800])
    good = fc.text_tensor("question", [GOOD_QUESTION])
    one = [grpc_tensor(fc.int_tensor("max_tokens", [1]))]
    done: queue.Queue = queue.Queue()
    for tensor in (long_question, good, good):  # sent together: rag_bls merges what its batcher gives it
        client.async_infer("rag_bls", [grpc_tensor(tensor), *one], lambda result, error: done.put((result, error)),
                           client_timeout=TIMEOUT_S)
    outcomes = [done.get(timeout=TIMEOUT_S) for _ in range(3)]
    client.close()
    errors = [e for _, e in outcomes if e is not None]
    assert len(errors) == 1, [e.message() for e in errors]
    assert errors[0].status() == "StatusCode.INVALID_ARGUMENT", (errors[0].status(), errors[0].message())
    assert "the question alone is" in errors[0].message()
    assert all(r.as_numpy("answer").shape == (1, 1) for r, e in outcomes if e is None)
