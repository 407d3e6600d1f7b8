"""In-place append (`append_to_index`): new segment files and one manifest swap, nothing rewritten."""

import json
import os

import numpy as np
import pytest

from tritonrag.index import store as index_module
from tritonrag.index.bm25 import BM25Index, TokenizerConfig
from tritonrag.index.corpus import Passage
from tritonrag.index.store import (IndexCorruptError, add_to_index, append_to_index, build_index, load_index,
                                   load_lexical)
from tritonrag.retrieval.search.exact import ExactSearch

from test_index import PASSAGES, hash_embed  # noqa: E402  (tests/ is on sys.path)

MORE = [Passage(f"q#{i}", f"U{i}", f"another text {i}") for i in range(7)]


def _stat(file):
    st = file.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def test_append_equals_a_fresh_build_and_leaves_the_old_files_alone(tmp_path):
    path, whole = tmp_path / "idx", tmp_path / "whole"
    build_index(path, PASSAGES[:6], hash_embed, embedder="enc-A", progress=False)
    before = {name: _stat(path / name) for name in ("embeddings.npy", "passages.jsonl")}
    append_to_index(path, PASSAGES[6:8], hash_embed, embedder="enc-A", progress=False)
    manifest = append_to_index(path, PASSAGES[8:], hash_embed, embedder="enc-A", progress=False)
    assert {name: _stat(path / name) for name in before} == before          # appended, not rewritten
    assert manifest["count"] == 10 and [s["count"] for s in manifest["segments"]] == [2, 2]
    assert not (path / "lexical-1").exists() and (path / "lexical-2").is_dir()  # the previous BM25 generation went
    build_index(whole, PASSAGES, hash_embed, embedder="enc-A", progress=False)
    got, want = load_index(path, embedder="enc-A", verify="full"), load_index(whole)
    assert got.passages == want.passages
    np.testing.assert_array_equal(got.vectors, want.vectors)
    q = hash_embed(["text number 8", "text number 1"])
    a, b = ExactSearch(got.vectors, "ip").search(q, 5), ExactSearch(want.vectors, "ip").search(q, 5)
    assert np.array_equal(a[0], b[0])
    stored = load_lexical(path, got.passages, TokenizerConfig())
    fresh = BM25Index.build(p.embedding_text() for p in PASSAGES)
    assert stored.count == 10
    np.testing.assert_allclose(stored.scores("text number 9 T9"), fresh.scores("text number 9 T9"), rtol=1e-6)


def test_a_crash_before_the_manifest_swap_leaves_the_index_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "idx"
    build_index(path, PASSAGES, hash_embed, embedder="enc-A", progress=False)
    real = index_module.atomic_write_text

    def dies_at_the_manifest(file, text):
        if file.name == "manifest.json":
            raise OSError("killed")
        real(file, text)

    monkeypatch.setattr(index_module, "atomic_write_text", dies_at_the_manifest)
    with pytest.raises(OSError, match="killed"):
        append_to_index(path, MORE, hash_embed, embedder="enc-A", progress=False)
    assert (path / "embeddings-1.npy").exists()                          # written, but not listed
    old = load_index(path, embedder="enc-A", verify="full")
    assert old.passages == PASSAGES and old.vectors.shape == (10, 8)
    monkeypatch.setattr(index_module, "atomic_write_text", real)
    append_to_index(path, MORE[:3], hash_embed, embedder="enc-A", progress=False)  # overwrites the leftovers
    assert load_index(path, verify="full").passages == PASSAGES + MORE[:3]


def test_loads_after_an_append_hash_only_the_new_files(tmp_path, monkeypatch):
    path = tmp_path / "idx"
    build_index(path, PASSAGES, hash_embed, embedder="enc-A", progress=False)
    load_index(path)                                                     # vouches for the base files
    append_to_index(path, MORE, hash_embed, embedder="enc-A", progress=False)
    hashed = []
    real = index_module._sha256
    monkeypatch.setattr(index_module, "_sha256", lambda file: hashed.append(file.name) or real(file))
    load_index(path)
    assert sorted(hashed) == ["bm25.json", "bm25.npz", "embeddings-1.npy", "passages-1.jsonl"]
    hashed.clear()
    load_index(path)
    assert hashed == []
    data = bytearray((path / "embeddings-1.npy").read_bytes())
    data[-1] ^= 0xFF
    (path / "embeddings-1.npy").write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="embeddings-1.npy does not match"):
        load_index(path)


def test_rewriting_add_compacts_segments_and_clashing_ids_are_refused(tmp_path):
    path = tmp_path / "idx"
    build_index(path, PASSAGES[:4], hash_embed, embedder="enc-A", progress=False)
    append_to_index(path, PASSAGES[4:7], hash_embed, embedder="enc-A", progress=False)
    with pytest.raises(ValueError, match="must be new and unique"):
        append_to_index(path, PASSAGES[6:8], hash_embed, embedder="enc-A", progress=False)
    manifest = add_to_index(path, PASSAGES[7:], hash_embed, embedder="enc-A", progress=False)
    assert "segments" not in manifest and manifest["count"] == 10
    assert sorted(os.listdir(path)) == ["bm25.json", "bm25.npz", "embeddings.npy", "manifest.json", "passages.jsonl"]
    assert load_index(path, verify="full").passages == PASSAGES
    assert json.loads((path / "manifest.json").read_text())["count"] == 10
