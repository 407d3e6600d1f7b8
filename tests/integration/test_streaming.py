"""Token streaming from the decoupled `generator_stream` model over gRPC streaming."""

import queue
import re
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

pytestmark = pytest.mark.integration


def stream_inputs(question: str, passages=(), max_tokens=24, temperature=None, stop=(), stream=None):
    values = {"question": np.array([question.encode()], dtype=np.object_),
              "max_tokens": np.array([max_tokens], dtype=np.int32)}
    if passages:
        values["passages"] = np.array([p.encode() for p in passages], dtype=np.object_)
    if temperature is not None:
        values["temperature"] = np.array([temperature], dtype=np.float32)
    if stop:
        values["stop"] = np.array([s.encode() for s in stop], dtype=np.object_)
    if stream is not None:
        values["stream"] = np.array([stream])
    inputs = []
    for name, array in values.items():
        tensor = grpcclient.InferInput(name, list(array.shape), {np.object_: "BYTES", np.int32: "INT32",
                                                                 np.float32: "FP32", np.bool_: "BOOL"}[array.dtype.type])
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


class Stream:
    """One gRPC stream; results land in a queue as (arrival time, result, error)."""

    def __init__(self, url: str):
        self.client = grpcclient.InferenceServerClient(url)
        self.results: queue.Queue = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.results.put((time.perf_counter(), result, error)))

    def send(self, request_id: str, inputs):
        self.client.async_stream_infer("generator_stream", inputs, request_id=request_id,
                                       enable_empty_final_response=True)

    def collect(self, request_id: str, timeout: float = 120):
        """(arrival, text piece or None, final flag, error) of one request, up to its final response."""
        out, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            arrived, result, error = self.results.get(timeout=deadline - time.monotonic())
            if error is not None:
                out.append((arrived, None, True, error))
                return out
            response = result.get_response()
            if response.id != request_id:
                continue
            final = response.parameters["triton_final_response"].bool_param
            answer = result.as_numpy("answer")
            out.append((arrived, None if answer is None else answer.reshape(-1)[0].decode(), final, None))
            if final:
                return out
        raise TimeoutError(f"no final response for {request_id}")

    def close(self, cancel: bool = False):
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


def running_sequences(server) -> float:
    url = f"http://{server.settings.host}:{server.settings.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    match = re.search(r'tritonrag_generator_sequences\{[^}]*state="running"[^}]*\} (\S+)', text)
    assert match, "the engine's gauge is missing from /metrics"
    return float(match.group(1))


def test_tokens_arrive_incrementally_and_match_the_plain_answer(server, grpc_client, facts):
    fact = facts[0]
    stream = Stream(server.grpc_url)
    try:
        stream.send("a", stream_inputs(fact.question, [fact.passage], max_tokens=24))
        events = stream.collect("a")
    finally:
        stream.close()
    assert all(error is None for *_, error in events), events
    pieces = [(t, text) for t, text, final, _ in events if text]
    assert events[-1][2] and sum(final for _, _, final, _ in events) == 1
    assert len(pieces) >= 3, events                                # several responses, not one
    assert pieces[-1][0] - pieces[0][0] > 0.01                     # spread over time, as decoded
    streamed = "".join(text for _, text in pieces).strip()

    inputs = [grpcclient.InferInput("question", [1, 1], "BYTES"), grpcclient.InferInput("passages", [1, 1], "BYTES"),
              grpcclient.InferInput("max_tokens", [1, 1], "INT32")]
    inputs[0].set_data_from_numpy(np.array([[fact.question.encode()]], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([[fact.passage.encode()]], dtype=np.object_))
    inputs[2].set_data_from_numpy(np.array([[24]], dtype=np.int32))
    plain = grpc_client.infer("generator", inputs).as_numpy("answer")[0, 0].decode()
    assert streamed == plain                                       # greedy: the same answer either way


def test_cancelling_a_stream_frees_its_engine_slot(server, grpc_client):
    stream = Stream(server.grpc_url)
    # temperature 5 samples near-uniform tokens, so an end token is unlikely before 500
    stream.send("long", stream_inputs("Tell me everything.", max_tokens=500, temperature=5.0))
    got = 0
    while got < 3:
        _, result, error = stream.results.get(timeout=60)
        assert error is None, error
        got += 1
    assert running_sequences(server) >= 1
    stream.close(cancel=True)
    deadline = time.monotonic() + 20
    while running_sequences(server) > 0:
        assert time.monotonic() < deadline, "the cancelled sequence kept its slot"
        time.sleep(0.2)


def test_stop_strings_and_bad_parameters_are_per_request(server, facts):
    fact = facts[1]
    stream = Stream(server.grpc_url)
    try:
        stream.send("full", stream_inputs(fact.question, [fact.passage], max_tokens=24))
        full = "".join(t or "" for _, t, _, _ in stream.collect("full"))
        words = full.split()
        assert len(words) >= 3, full
        stream.send("bad", stream_inputs(fact.question, [fact.passage], temperature=-1.0))
        stream.send("cut", stream_inputs(fact.question, [fact.passage], max_tokens=24, stop=[words[2]]))
        bad = stream.collect("bad")
        cut = "".join(t or "" for _, t, _, _ in stream.collect("cut"))
    finally:
        stream.close()
    assert bad[-1][3] is not None and "temperature" in str(bad[-1][3])
    assert words[2] not in cut and full.startswith(cut), (full, cut)


def test_too_many_or_too_large_passages_are_refused_per_request(server, grpc_client, facts):
    """Passages are bounded per request in count and bytes (generator and generator_stream):
    INVALID_ARGUMENT before any tokenising, and the next request is served."""
    from tritonclient.utils import InferenceServerException

    fact = facts[0]
    many, large = ["a passage"] * 101, ["x" * 600_000, "y" * 600_000]
    stream = Stream(server.grpc_url)
    try:
        stream.send("many", stream_inputs(fact.question, many))
        stream.send("large", stream_inputs(fact.question, large))
        stream.send("good", stream_inputs(fact.question, [fact.passage], max_tokens=8))
        errors = {rid: stream.collect(rid)[-1][3] for rid in ("many", "large")}
        good = stream.collect("good")
    finally:
        stream.close()
    assert "101 passages; the limit is 100" in str(errors["many"])
    assert "the limit is 1048576" in str(errors["large"])
    assert good[-1][3] is None and "".join(t or "" for _, t, _, _ in good).strip()
    for passages, message in ((many, "101 passages; the limit is 100"), (large, "the limit is 1048576")):
        q = grpcclient.InferInput("question", [1, 1], "BYTES")
        q.set_data_from_numpy(np.array([[fact.question.encode()]], dtype=np.object_))
        p = grpcclient.InferInput("passages", [1, len(passages)], "BYTES")
        p.set_data_from_numpy(np.array([[s.encode() for s in passages]], dtype=np.object_))
        with pytest.raises(InferenceServerException, match=message) as refused:
            grpc_client.infer("generator", [q, p], client_timeout=120)
        assert "INVALID_ARGUMENT" in str(refused.value.status())
