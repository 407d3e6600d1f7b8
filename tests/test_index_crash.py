"""A process killed (SIGKILL) at any moment while building, adding to or appending to an
index in place leaves the previous index whole and loadable; adding embeds only the new passages."""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from tritonrag.common import atomic_files as storage
from tritonrag.index.corpus import Passage
from tritonrag.index.store import add_to_index, build_index, load_index

from test_index import hash_embed  # noqa: E402  (tests/ is on sys.path)

BATCH = 300  # passages per add: the writes take long enough that random kills land inside them

WRITER = textwrap.dedent("""
    import hashlib, sys
    import numpy as np
    from tritonrag.index.corpus import Passage
    from tritonrag.index.store import add_to_index, append_to_index, build_index

    def embed(texts):
        return np.array([np.frombuffer(hashlib.sha256(t.encode()).digest() * 8, dtype=np.uint8) / 255.0
                         for t in texts], dtype=np.float32)

    path, mode, round_ = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for step in range(10_000):
        batch = [Passage(f"r{round_}-s{step}-{j}", "T", f"passage {round_} {step} {j} " * 30) for j in range({batch})]
        if mode == "add":
            add_to_index(path, batch, embed, embedder="toy", progress=False)
        elif mode == "append":
            append_to_index(path, batch, embed, embedder="toy", progress=False)
        else:
            build_index(path, batch, embed, embedder="toy", progress=False)
        print(step, flush=True)
""").replace("{batch}", str(BATCH))


@pytest.mark.parametrize("mode", ["add", "append", "build"])
def test_sigkill_at_random_moments_never_damages_the_index(tmp_path, mode, report_figure):
    path = tmp_path / "idx"
    first = [Passage(f"first-{j}", "T", f"first passage {j} " * 30) for j in range(BATCH)]
    build_index(path, first, lambda texts: np.tile(hash_embed(texts), (1, 32)), embedder="toy", progress=False)
    rng = random.Random(0)
    completed_writes = 0
    for round_ in range(12):
        before = load_index(path, embedder="toy")
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), mode, str(round_)],
                                 stdout=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.3, 2.5))
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        completed_writes += len(out.split())
        index = load_index(path, embedder="toy")  # checksums verified: whole, or refused
        assert index.manifest["count"] % BATCH == 0 and len(index.passages) == index.manifest["count"]
        if mode in ("add", "append"):
            assert index.manifest["count"] >= before.manifest["count"]
            assert index.passages[:len(before.passages)] == before.passages
    assert completed_writes > 0, "the writer never finished one write: kills all landed too early"
    # the killed writers' half-written staging folders go with the next write
    add_to_index(path, [Passage("last", "", "last")], lambda t: np.tile(hash_embed(t), (1, 32)),
                 embedder="toy", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx"]  # the writer lock file stays
    report_figure(f"index {mode}: 12 SIGKILLs at random moments, {completed_writes} writes completed "
                  f"between them, index whole after every kill")


def test_add_embeds_only_the_new_passages(tmp_path):
    path = tmp_path / "idx"
    old = [Passage(f"a{i}", "", f"old {i}") for i in range(5)]
    build_index(path, old, hash_embed, embedder="toy", progress=False)
    seen = []

    def counting_embed(texts):
        seen.extend(texts)
        return hash_embed(texts)

    new = [Passage(f"b{i}", "", f"new {i}") for i in range(3)]
    manifest = add_to_index(path, new, counting_embed, embedder="toy", progress=False)
    assert seen == [p.text for p in new]
    index = load_index(path, embedder="toy")
    assert manifest["count"] == 8 and index.passages == old + new
    np.testing.assert_array_equal(index.vectors, np.concatenate([hash_embed([p.text for p in old + new])]))
    with pytest.raises(ValueError, match="already in the index"):
        add_to_index(path, [Passage("a1", "", "again")], hash_embed, embedder="toy", progress=False)


def test_the_fallback_replace_is_repaired_if_it_crashed_between_its_renames(tmp_path, monkeypatch):
    path = tmp_path / "idx"
    build_index(path, [Passage("x", "", "x")], hash_embed, embedder="toy", progress=False)
    # where RENAME_EXCHANGE is missing, a replace renames the old folder aside first
    os.rename(path, tmp_path / ".idx.old-12345")
    assert storage.recover_directory(path)
    assert load_index(path, embedder="toy").passages == [Passage("x", "", "x")]
    monkeypatch.setattr(storage, "exchange_paths", lambda a, b: False)
    add_to_index(path, [Passage("y", "", "y")], hash_embed, embedder="toy", progress=False)
    assert [p.id for p in load_index(path, embedder="toy").passages] == ["x", "y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".idx.lock", "idx"]


def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("A")
    (b / "f").write_text("B")
    if not storage.exchange_paths(a, b):
        pytest.skip("this file system has no RENAME_EXCHANGE; atomic_directory uses the repaired fallback")
    assert (a / "f").read_text() == "B" and (b / "f").read_text() == "A"
