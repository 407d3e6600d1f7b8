import hashlib
import json
import shutil

import numpy as np
import pytest

from tritonrag.index.corpus import Passage
from tritonrag.index.store import IndexCorruptError, IndexMismatchError, build_index, load_index


def hash_embed(texts):
    """Deterministic stand-in vectors: these tests are about persistence, not meaning."""
    return np.array([np.frombuffer(hashlib.sha256(t.encode()).digest(), dtype=np.uint8)[:8] / 255.0
                     for t in texts], dtype=np.float32)


PASSAGES = [Passage(f"p#{i}", f"T{i}", f"text number {i}") for i in range(10)]


def test_round_trip_with_manifest(tmp_path):
    manifest = build_index(tmp_path / "idx", PASSAGES, hash_embed, embedder="enc-A", batch_size=3, progress=False)
    assert manifest["count"] == 10 and manifest["dimension"] == 8 and manifest["embedder"] == "enc-A"
    index = load_index(tmp_path / "idx", embedder="enc-A", dimension=8)
    assert index.passages == PASSAGES
    np.testing.assert_array_equal(index.vectors, hash_embed([p.embedding_text() for p in PASSAGES]))


def test_other_embedder_is_refused(tmp_path):
    build_index(tmp_path / "idx", PASSAGES, hash_embed, embedder="enc-A", progress=False)
    with pytest.raises(IndexMismatchError, match="built with embedder 'enc-A'.*'enc-B'"):
        load_index(tmp_path / "idx", embedder="enc-B")
    with pytest.raises(IndexMismatchError, match="dimension 8"):
        load_index(tmp_path / "idx", dimension=384)


@pytest.mark.parametrize("damage", ["flip_vector_byte", "truncate_passages", "drop_manifest", "bad_manifest"])
def test_damaged_index_is_refused(tmp_path, damage):
    path = tmp_path / "idx"
    build_index(path, PASSAGES, hash_embed, embedder="enc-A", progress=False)
    if damage == "flip_vector_byte":
        data = bytearray((path / "embeddings.npy").read_bytes())
        data[-1] ^= 0xFF
        (path / "embeddings.npy").write_bytes(bytes(data))
    elif damage == "truncate_passages":
        text = (path / "passages.jsonl").read_text()
        (path / "passages.jsonl").write_text(text[: len(text) // 2])
    elif damage == "drop_manifest":
        (path / "manifest.json").unlink()
    else:
        (path / "manifest.json").write_text("{not json")
    with pytest.raises(IndexCorruptError):
        load_index(path, embedder="enc-A")


def test_crash_while_building_keeps_the_previous_index(tmp_path):
    path = tmp_path / "idx"
    build_index(path, PASSAGES, hash_embed, embedder="enc-A", progress=False)
    before = json.loads((path / "manifest.json").read_text())

    def crashing_embed(texts):
        if any("number 7" in t for t in texts):
            raise RuntimeError("power cut")
        return hash_embed(texts)

    bigger = PASSAGES + [Passage("new#0", "", "a new passage")]
    with pytest.raises(RuntimeError, match="power cut"):
        build_index(path, bigger, crashing_embed, embedder="enc-A", batch_size=2, progress=False)
    assert json.loads((path / "manifest.json").read_text()) == before
    assert load_index(path, embedder="enc-A").passages == PASSAGES
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx"]  # no staging folder; the lock file stays


def test_empty_corpus_is_refused(tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        build_index(tmp_path / "idx", [], hash_embed, embedder="enc-A", progress=False)


class FakeEmbedder:  # the launcher's own logic is under test, not the encoder
    built: list = []

    def __init__(self, model, device="cpu"):
        self.built.append(model)

    def embed_passages(self, texts):
        return hash_embed(texts)


def test_launcher_rebuilds_a_damaged_cached_index_but_not_another_embedders(tmp_path, monkeypatch):
    from tritonrag.server import launcher

    built = []
    monkeypatch.setattr(FakeEmbedder, "built", built)
    monkeypatch.setattr("tritonrag.models.embedding.Embedder", FakeEmbedder)
    monkeypatch.setenv("TRITONRAG_CACHE_DIR", str(tmp_path / "cache"))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "alpha"}\n{"id": "b", "text": "beta"}\n')
    path = launcher.ensure_index([str(corpus)], "enc-A", progress=False)  # the cached index, the package's own
    assert path.parent == tmp_path / "cache" / "indexes"
    assert launcher.ensure_index([str(corpus)], "enc-A", progress=False) == path and len(built) == 1
    (path / "passages.jsonl").write_text("damaged")
    launcher.ensure_index([str(corpus)], "enc-A", progress=False)
    assert len(built) == 2 and [p.id for p in load_index(path).passages] == ["a", "b"]
    (path / "manifest.json").write_text(json.dumps({**load_index(path).manifest, "embedder": "enc-B"}))
    with pytest.raises(IndexMismatchError):
        launcher.ensure_index([str(corpus)], "enc-A", progress=False)


@pytest.mark.parametrize("problem", ["missing", "mistyped", "a_file", "damaged", "other_embedder"])
def test_launcher_never_builds_over_a_given_index(tmp_path, monkeypatch, problem):
    """`serve --index DIR`: DIR is the user's; a bad one is an error, not a rebuild from the corpus."""
    from tritonrag.server import launcher
    from tritonrag.index.store import IndexProblem

    built = []
    monkeypatch.setattr(FakeEmbedder, "built", built)
    monkeypatch.setattr("tritonrag.models.embedding.Embedder", FakeEmbedder)
    monkeypatch.setenv("TRITONRAG_CACHE_DIR", str(tmp_path / "cache"))
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "alpha"}\n')
    path = tmp_path / "idx"
    build_index(path, PASSAGES, hash_embed, embedder="enc-A", progress=False)
    assert launcher.ensure_index([str(corpus)], "enc-A", path, progress=False) == path  # a sound one is served
    given = path
    if problem == "missing":
        shutil.rmtree(path)
    elif problem == "mistyped":
        given = tmp_path / "idz"
    elif problem == "a_file":
        given = tmp_path / "c.jsonl"
    elif problem == "damaged":
        (path / "passages.jsonl").write_text("damaged")
    files = {f: f.read_bytes() for f in tmp_path.rglob("*") if f.is_file()}
    message = {"missing": "no such folder", "mistyped": "no such folder", "a_file": "not a folder",
               "damaged": "checksum", "other_embedder": "built with embedder 'enc-A'"}[problem]
    with pytest.raises(IndexProblem, match=message):
        launcher.ensure_index([str(corpus)], "enc-B" if problem == "other_embedder" else "enc-A", given,
                              progress=False)
    assert built == []
    assert {f: f.read_bytes() for f in tmp_path.rglob("*") if f.is_file()} == files  # nothing written
    assert not (tmp_path / "cache").exists() and not (tmp_path / "idz").exists()


def test_launcher_builds_a_given_index_only_when_asked_and_only_where_none_is(tmp_path, monkeypatch):
    from tritonrag.server import launcher

    built = []
    monkeypatch.setattr(FakeEmbedder, "built", built)
    monkeypatch.setattr("tritonrag.models.embedding.Embedder", FakeEmbedder)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "text": "alpha"}\n')
    (tmp_path / "empty").mkdir()
    for name in ("new", "empty"):  # `serve --index DIR --build-index`
        path = launcher.ensure_index([str(corpus)], "enc-A", tmp_path / name, progress=False, build=True)
        assert [p.id for p in load_index(path, embedder="enc-A").passages] == ["a"]
    assert len(built) == 2
    (tmp_path / "new" / "passages.jsonl").write_text("damaged")
    with pytest.raises(IndexCorruptError):  # an existing index is never replaced, damaged or not
        launcher.ensure_index([str(corpus)], "enc-A", tmp_path / "new", progress=False, build=True)
    assert len(built) == 2 and (tmp_path / "new" / "passages.jsonl").read_text() == "damaged"


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from tritonrag.common.atomic_files import atomic_write_text

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        build_index(tmp_path / "idx", PASSAGES, hash_embed, embedder="enc-A", progress=False)
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "idx").stat().st_mode) == 0o755


def test_atomic_directory_without_replace_keeps_the_first_result(tmp_path):
    from tritonrag.common.atomic_files import atomic_directory

    with atomic_directory(tmp_path / "d", replace=False) as staging:
        (staging / "who").write_text("first")
    with atomic_directory(tmp_path / "d", replace=False) as staging:
        (staging / "who").write_text("second")
    assert (tmp_path / "d" / "who").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_a_verified_index_loads_without_hashing_until_a_file_changes(tmp_path, monkeypatch):
    from tritonrag.index import store as index_module

    path = tmp_path / "idx"
    build_index(path, PASSAGES, hash_embed, embedder="enc-A", progress=False)
    hashed = []
    real = index_module._sha256
    monkeypatch.setattr(index_module, "_sha256", lambda file: hashed.append(file.name) or real(file))
    load_index(path)                      # first load: full check, writes verified.json
    assert sorted(hashed) == sorted(json.loads((path / "manifest.json").read_text())["checksums"])
    hashed.clear()
    load_index(path)                      # hot path: stat only
    assert hashed == []
    load_index(path, verify="full")       # asked for: hashes again
    assert len(hashed) == 4
    hashed.clear()
    data = bytearray((path / "embeddings.npy").read_bytes())
    data[-1] ^= 0xFF
    (path / "embeddings.npy").write_bytes(bytes(data))  # same size, rewritten: stat changes
    with pytest.raises(IndexCorruptError, match="embeddings.npy does not match"):
        load_index(path)
    assert "embeddings.npy" in hashed


def test_bm25_statistics_are_persisted_and_grow_with_add(tmp_path):
    from tritonrag.index.bm25 import BM25Index, TokenizerConfig
    from tritonrag.index.store import add_to_index, load_lexical

    path = tmp_path / "idx"
    build_index(path, PASSAGES[:6], hash_embed, embedder="enc-A", progress=False)
    add_to_index(path, PASSAGES[6:], hash_embed, embedder="enc-A", progress=False)
    index = load_index(path, embedder="enc-A")
    stored = load_lexical(path, index.passages, TokenizerConfig())
    whole = BM25Index.build(p.embedding_text() for p in PASSAGES)
    assert stored.count == 10
    np.testing.assert_allclose(stored.scores("text number 7 T7"), whole.scores("text number 7 T7"), rtol=1e-6)
    # another tokenizer than the stored one: built in memory from the passages
    plain = load_lexical(path, index.passages, TokenizerConfig(stem=False, stop_words=False))
    assert plain.tokenizer_config == TokenizerConfig(stem=False, stop_words=False) and plain.count == 10
