"""A real tritonserver, started by the package's launcher, shared by the integration tests."""

from pathlib import Path

import pytest

from tritonrag.index.synthetic import make_facts, write_facts
from tritonrag.server.launcher import ServerSettings, TritonServer, free_ports
from tritonrag.server.supervisor import SupervisorPolicy

SQUAD = Path(__file__).resolve().parents[1].parent.parent / "shared" / "data" / "squad-v2.0-dev-part.json"


@pytest.fixture(scope="session")
def facts():
    return make_facts(60, seed=7)


@pytest.fixture(scope="session")
def server_corpus(tmp_path_factory, facts):
    """CPython's docs + synthetic facts + the shared SQuAD paragraphs (when present)."""
    work = tmp_path_factory.mktemp("corpus")
    write_facts(facts, work / "facts.jsonl")
    corpus = ["pydoc", str(work / "facts.jsonl")]
    if SQUAD.exists():
        corpus.append(str(SQUAD))
    return corpus


@pytest.fixture(scope="session")
def server(tmp_path_factory, server_corpus):
    work = tmp_path_factory.mktemp("server")
    http, grpc, metrics = free_ports(3)
    # The tests send up to 32 requests at once to see them batched: the generator's queue
    # must hold a full batch (the CPU default, 8, rejects the rest; test_overload.py
    # exercises that default on its own server).
    settings = ServerSettings(http_port=http, grpc_port=grpc, metrics_port=metrics,
                              corpus=server_corpus, index=work / "index", build_index=True,
                              max_queue={"generator": 64},
                              # the tests count executions in Triton's statistics: no canary requests
                              supervision=SupervisorPolicy(canary_model=None))
    with TritonServer(settings, run_dir=work / "run") as running:
        yield running
    # a failing test often wants the server's side of the story
    print(running.log_tail(20))


@pytest.fixture
def grpc_client(server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


def model_counts(client, model: str) -> tuple[int, int]:
    """(inference_count, execution_count) of a model from Triton's statistics API."""
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))
