"""Bad input gets a clear per-request error; the server stays up; batch-mates are unharmed."""

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpc
from tritonclient.utils import InferenceServerException

from .conftest import model_counts

pytestmark = pytest.mark.integration

GOOD = "What does the with statement do?"


def inputs(question=GOOD.encode(), top_k=None, max_tokens=None, module=grpcclient):
    built = []
    if question is not None:
        q = module.InferInput("question", [1, 1], "BYTES")
        q.set_data_from_numpy(np.array([[question]], dtype=np.object_))
        built.append(q)
    for name, value in (("top_k", top_k), ("max_tokens", max_tokens)):
        if value is not None:
            t = module.InferInput(name, [1, 1], "INT32")
            t.set_data_from_numpy(np.array([[value]], dtype=np.int32))
            built.append(t)
    return built


@pytest.mark.parametrize("kwargs, message", [
    (dict(question=b""), "question is empty"),
    (dict(question=b" \n "), "question is empty"),
    (dict(question=b"x" * 1_000_000), "question is 1000000 bytes; the limit is 4096"),
    (dict(question=b"caf\xe9 \xff"), "not valid UTF-8"),
    (dict(top_k=0), "top_k must be between 1 and 100, got 0"),
    (dict(top_k=-3), "top_k must be between 1 and 100, got -3"),
    (dict(top_k=2**31 - 1), "top_k must be between 1 and 100"),
    (dict(max_tokens=0), "max_tokens must be between 1 and 512, got 0"),
    (dict(max_tokens=100_000), "max_tokens must be between 1 and 512"),
])
def test_bad_values_get_a_clear_error(grpc_client, kwargs, message):
    with pytest.raises(InferenceServerException, match=message):
        grpc_client.infer("rag_ensemble", inputs(**kwargs), client_timeout=120)
    assert grpc_client.is_server_ready()


def test_wrong_dtype_shape_and_missing_input_are_refused_by_triton(grpc_client):
    as_int = grpcclient.InferInput("question", [1, 1], "INT32")
    as_int.set_data_from_numpy(np.array([[7]], dtype=np.int32))
    with pytest.raises(InferenceServerException, match="expects .BYTES."):
        grpc_client.infer("rag_ensemble", [as_int])
    wide = grpcclient.InferInput("question", [1, 2], "BYTES")
    wide.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=np.object_))
    with pytest.raises(InferenceServerException, match="(?i)shape"):
        grpc_client.infer("rag_ensemble", [wide])
    # Triton checks the input count but, for an ensemble with optional inputs, not which
    # required one is missing: its wording then is "unexpected deadlock ... no more
    # ensemble steps can be made". Still a per-request INVALID_ARGUMENT error.
    with pytest.raises(InferenceServerException, match="expected .*inputs") as no_inputs:
        grpc_client.infer("rag_ensemble", [])
    assert no_inputs.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="ensemble 'rag_ensemble'") as only_top_k:
        grpc_client.infer("rag_ensemble", inputs(question=None, top_k=2))
    assert only_top_k.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match="(?i)batch"):
        big = grpcclient.InferInput("question", [33, 1], "BYTES")
        big.set_data_from_numpy(np.array([[b"q"]] * 33, dtype=np.object_))
        grpc_client.infer("rag_ensemble", [big])
    assert grpc_client.is_server_ready()
    result = grpc_client.infer("rag_ensemble", inputs(max_tokens=4))
    assert result.as_numpy("answer")[0, 0]


def test_bad_requests_do_not_fail_their_batch_mates(server, grpc_client, report_figure):
    bad = [dict(question=b""), dict(question=b"\xff\xfe"), dict(top_k=0), dict(max_tokens=-1)]
    good = [dict(question=f"{GOOD} ({n})".encode(), top_k=2, max_tokens=3) for n in range(12)]
    mixed = [x for pair in zip(good, bad + [None] * len(good)) for x in pair if x is not None]
    before = model_counts(grpc_client, "embedder")

    async def send_all():
        async with aiogrpc.InferenceServerClient(server.grpc_url) as client:
            async def one(kw):
                try:
                    return await client.infer("rag_ensemble", inputs(module=aiogrpc, **kw))
                except InferenceServerException as exc:
                    return exc
            return await asyncio.gather(*(one(kw) for kw in mixed))

    results = asyncio.run(send_all())
    for kw, result in zip(mixed, results):
        if kw in bad:
            assert isinstance(result, InferenceServerException), kw
        else:
            assert not isinstance(result, Exception), result
            assert result.as_numpy("sources").shape == (1, 2)
    inferences, executions = (a - b for a, b in zip(model_counts(grpc_client, "embedder"), before))
    report_figure(f"bad+good mix: embedder ran {inferences} inferences in {executions} executions")
    assert inferences == len(mixed) and executions < inferences  # bad and good did share batches
