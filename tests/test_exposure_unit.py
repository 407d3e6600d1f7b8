"""What the launcher exposes: loopback binding, admin APIs behind a key, no remote code."""

import ast
import re
from pathlib import Path

import pytest

from tritonrag.cli import _settings, build_parser
from tritonrag.index.synthetic import make_facts, write_facts
from tritonrag.server.launcher import (
    ADMIN_APIS,
    ADMIN_HEADER,
    GRPC_HEADER_PREFIX,
    ServerSettings,
    TritonServer,
    restricted_api_options,
)

ROOT = Path(__file__).resolve().parent.parent


def option(command: list[str], name: str) -> list[str]:
    return [arg.split("=", 1)[1] for arg in command if arg.startswith(f"--{name}=")]


def test_restricted_options_put_every_admin_api_behind_the_key():
    options = restricted_api_options(set(), "k3y")
    spec = f"model-repository,shared-memory,logging,trace:{ADMIN_HEADER}=k3y"
    assert options == [f"--http-restricted-api={spec}", f"--grpc-restricted-protocol={spec}"]


def test_open_apis_are_left_out_and_all_open_means_no_restriction():
    options = restricted_api_options({"logging", "trace"}, "k")
    assert all(o.endswith(f"=model-repository,shared-memory:{ADMIN_HEADER}=k") for o in options)
    assert restricted_api_options(set(ADMIN_APIS), "k") == []


@pytest.mark.parametrize("open_apis, key, message", [
    ({"inference"}, "k", "unknown admin API"),
    ({"model_repository"}, "k", "unknown admin API"),
    (set(), "", "admin key"),
    (set(), "a,b", "admin key"),
    (set(), "a:b=c", "admin key"),
    (set(), "a b", "admin key"),
])
def test_bad_admin_settings_are_refused(open_apis, key, message):
    with pytest.raises(ValueError, match=message):
        restricted_api_options(open_apis, key)


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


def test_default_command_binds_loopback_and_restricts_admin_apis_with_a_fresh_key(tiny_index, tmp_path):
    settings = ServerSettings(index=tiny_index)
    first = TritonServer(settings, run_dir=tmp_path / "a")
    command = first.prepare()
    assert option(command, "http-address") == option(command, "grpc-address") == ["127.0.0.1"]
    assert option(command, "metrics-address") == ["127.0.0.1"]
    key = first.admin_key
    assert len(key) >= 32
    spec = f"model-repository,shared-memory,logging,trace:{ADMIN_HEADER}={key}"
    assert option(command, "http-restricted-api") == option(command, "grpc-restricted-protocol") == [spec]
    assert first.admin_headers("http") == {ADMIN_HEADER: key}
    assert first.admin_headers("grpc") == {GRPC_HEADER_PREFIX + ADMIN_HEADER: key}
    second = TritonServer(settings, run_dir=tmp_path / "b")
    second.prepare()
    assert second.admin_key != key  # random per start
    assert first.prepare() and first.admin_key not in (key, second.admin_key)


def test_given_key_and_open_apis_reach_the_command(tiny_index, tmp_path):
    server = TritonServer(ServerSettings(index=tiny_index, admin_key="fixed-key", open_apis={"trace"}),
                          run_dir=tmp_path)
    command = server.prepare()
    assert option(command, "http-restricted-api") == [f"model-repository,shared-memory,logging:{ADMIN_HEADER}=fixed-key"]


def test_cli_admin_flags(monkeypatch):
    monkeypatch.delenv("TRITONRAG_ADMIN_KEY", raising=False)
    default = _settings(build_parser().parse_args(["serve"]))
    assert default.host == "127.0.0.1" and default.open_apis == set() and default.admin_key is None
    some = _settings(build_parser().parse_args(["serve", "--allow-admin-api", "logging", "--allow-admin-api",
                                                "trace", "--admin-key", "abc"]))
    assert some.open_apis == {"logging", "trace"} and some.admin_key == "abc"
    assert _settings(build_parser().parse_args(["serve", "--allow-admin-api", "all"])).open_apis == set(ADMIN_APIS)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--allow-admin-api", "inference"])
    monkeypatch.setenv("TRITONRAG_ADMIN_KEY", "from-env")
    assert _settings(build_parser().parse_args(["serve"])).admin_key == "from-env"


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
