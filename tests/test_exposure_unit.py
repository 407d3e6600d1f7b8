"""What the launcher exposes: loopback binding, admin APIs locked with no key, no remote code."""

import ast
import re
from pathlib import Path

import pytest

from tritonrag.cli import _settings, build_parser
from tritonrag.index.synthetic import make_facts, write_facts
from tritonrag.server.launcher import (
    ADMIN_APIS,
    ServerSettings,
    TritonServer,
    restricted_api_options,
)

ROOT = Path(__file__).resolve().parent.parent


def option(command: list[str], name: str) -> list[str]:
    return [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]


def _unsendable(spec: str) -> bool:
    """A restriction `APIS:header=value` whose header no HTTP or gRPC client can send."""
    header = spec.split(":", 1)[1].split("=", 1)[0]
    return any(c in header for c in "\r\n\0")


def test_restricted_options_lock_every_admin_api_with_no_usable_key():
    options = restricted_api_options(set())
    http, grpc = option(options, "http-restricted-api"), option(options, "grpc-restricted-protocol")
    assert http == grpc and len(http) == 1
    assert http[0].startswith("model-repository,shared-memory,logging,trace:") and _unsendable(http[0])


def test_open_apis_are_left_out_and_all_open_means_no_restriction():
    options = restricted_api_options({"logging", "trace"})
    assert all(o.split("=", 1)[1].startswith("model-repository,shared-memory:") for o in options)
    assert restricted_api_options(set(ADMIN_APIS)) == []


@pytest.mark.parametrize("open_apis", [{"inference"}, {"model_repository"}])
def test_bad_admin_settings_are_refused(open_apis):
    with pytest.raises(ValueError, match="unknown admin API"):
        restricted_api_options(open_apis)


@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory, embedder):
    from tritonrag.index.store import build_index

    work = tmp_path_factory.mktemp("tiny")
    facts = work / "facts.jsonl"
    write_facts(make_facts(5, seed=1), facts)
    from tritonrag.index.corpus import load_corpora

    build_index(work / "index", load_corpora([str(facts)]), embedder.embed_passages, embedder="all-MiniLM-L6-v2",
                progress=False)
    return work / "index"


def test_default_command_binds_loopback_locks_admin_apis_and_cannot_load_models(tiny_index, tmp_path):
    command = TritonServer(ServerSettings(index=tiny_index), run_dir=tmp_path / "a").prepare()
    assert option(command, "http-address") == option(command, "grpc-address") == ["127.0.0.1"]
    assert option(command, "metrics-address") == ["127.0.0.1"]
    # no repository load/unload at all, whatever key anyone has
    assert option(command, "model-control-mode") == ["none"] and not option(command, "load-model")
    http, grpc = option(command, "http-restricted-api"), option(command, "grpc-restricted-protocol")
    assert http == grpc and len(http) == 1 and _unsendable(http[0])
    assert http[0].split(":", 1)[0] == "model-repository,shared-memory,logging,trace"


def test_open_apis_reach_the_command(tiny_index, tmp_path):
    server = TritonServer(ServerSettings(index=tiny_index, open_apis={"trace"}), run_dir=tmp_path)
    command = server.prepare()
    assert [o.split(":", 1)[0] for o in option(command, "http-restricted-api")] == [
        "model-repository,shared-memory,logging"]


def test_cli_admin_flags(monkeypatch):
    default = _settings(build_parser().parse_args(["serve"]))
    assert default.host == "127.0.0.1" and default.open_apis == set()
    assert not hasattr(default, "admin_key")
    with pytest.raises(SystemExit):   # there is no key to give
        build_parser().parse_args(["serve", "--admin-key", "abc"])
    some = _settings(build_parser().parse_args(["serve", "--allow-admin-api", "logging", "--allow-admin-api",
                                                "trace"]))
    assert some.open_apis == {"logging", "trace"}
    assert _settings(build_parser().parse_args(["serve", "--allow-admin-api", "all"])).open_apis == set(ADMIN_APIS)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--allow-admin-api", "inference"])


def python_sources() -> list[Path]:
    files = [*(ROOT / "tritonrag").rglob("*.py"), *(ROOT / "client").rglob("*.py")]
    assert len(files) > 10
    return files


def test_no_remote_code_is_ever_trusted():
    pattern = re.compile(r"trust_remote_code\W{0,4}(=|:)\s*True")
    for path in python_sources():
        assert not pattern.search(path.read_text()), path


def test_model_loading_calls_never_pass_trust_remote_code_true():
    calls = 0
    for path in python_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_pretrained":
                calls += 1
                for kw in node.keywords:
                    assert kw.arg is not None, f"{path}:{node.lineno}: **kwargs could carry trust_remote_code"
                    if kw.arg == "trust_remote_code":
                        assert isinstance(kw.value, ast.Constant) and kw.value.value is False, \
                            f"{path}:{node.lineno}"
    assert calls >= 4  # tokenizer and model of the embedder and the generator, at least
