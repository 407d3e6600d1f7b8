import json
import os
import subprocess
import sys

import pytest

from tritonrag.cli import build_parser
from tritonrag.index.store import load_index


def test_serve_defaults_to_loopback_and_builtin_models():
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"
    assert (args.http_port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)
    assert args.embedder.startswith("builtin:") and args.generator.startswith("builtin:")


def test_synth_and_index_commands_build_a_loadable_index(tmp_path):
    facts, questions, out = tmp_path / "facts.jsonl", tmp_path / "q.jsonl", tmp_path / "idx"
    run = lambda *a: subprocess.run([sys.executable, "-m", "tritonrag", *a], capture_output=True, text=True,
                                    check=True)
    run("synth", "--count", "20", "--out", str(facts), "--questions", str(questions))
    assert len(questions.read_text().splitlines()) == 20
    result = run("index", "--corpus", str(facts), "--out", str(out))
    assert "20 passages, dimension 384" in result.stdout
    assert "embedding passages" in result.stderr  # progress bar
    index = load_index(out, embedder="all-MiniLM-L6-v2")
    assert json.loads((out / "manifest.json").read_text())["metric"] == "ip"
    assert [p.id for p in index.passages] == [f"synthetic:{n}" for n in range(20)]


def test_param_option_sets_one_models_config_parameters(monkeypatch):
    from tritonrag.cli import _settings

    monkeypatch.delenv("TRITONRAG_PARAMS", raising=False)
    args = build_parser().parse_args(["serve", "--param", "retriever.fusion=dense",
                                      "--param", "generator_stream.ignore_eos=true"])
    assert _settings(args).extra_parameters == {"retriever": {"fusion": "dense"},
                                                "generator_stream": {"ignore_eos": "true"}}
    monkeypatch.setenv("TRITONRAG_PARAMS", "retriever.fusion=bm25")
    assert _settings(build_parser().parse_args(["serve"])).extra_parameters == {"retriever": {"fusion": "bm25"}}
    with pytest.raises(SystemExit):
        _settings(build_parser().parse_args(["serve", "--param", "fusion=dense"]))


@pytest.mark.parametrize("problem", ["missing", "damaged"])
def test_serve_with_a_bad_index_exits_non_zero_and_builds_nothing(tmp_path, problem):
    from test_index import hash_embed  # tests/ is on sys.path

    from tritonrag.index.corpus import Passage
    from tritonrag.index.store import build_index

    path, corpus = tmp_path / "idx", tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "alpha"}\n')
    if problem == "damaged":
        build_index(path, [Passage("x", "", "mine")], hash_embed, embedder="all-MiniLM-L6-v2", progress=False)
        (path / "embeddings.npy").write_bytes((path / "embeddings.npy").read_bytes()[:-4] + b"\0\0\0\0")
    files = {f: f.read_bytes() for f in tmp_path.rglob("*") if f.is_file()}
    env = {**os.environ, "TRITONRAG_CACHE_DIR": str(tmp_path / "cache")}
    # /bin/false as the server: were the index accepted, the start would fail later, not hang
    result = subprocess.run([sys.executable, "-m", "tritonrag", "serve", "--index", str(path), "--corpus", str(corpus),
                             "--tritonserver", "/bin/false", "--no-supervise"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 1, result.stderr
    want = "no such folder" if problem == "missing" else "embeddings.npy does not match its checksum"
    assert "could not start the server: " in result.stderr and want in result.stderr, result.stderr
    assert "--corpus is not used with --index" in result.stderr
    assert {f: f.read_bytes() for f in tmp_path.rglob("*") if f.is_file()} == files  # nothing built or rebuilt
    assert path.exists() == (problem == "damaged")


def test_build_index_flag_needs_an_index_folder():
    result = subprocess.run([sys.executable, "-m", "tritonrag", "serve", "--build-index"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "--build-index needs --index DIR" in result.stderr
