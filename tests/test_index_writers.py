"""Concurrent writers of one index: separate processes adding (`add_to_index`, the folder
rewritten and swapped) and appending in place (`append_to_index`, new segment and manifest)
at the same moment all succeed, and the index ends with every passage exactly once, each
vector the embedding of its own passage."""

import collections
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from tritonrag.index.corpus import Passage
from tritonrag.index.store import build_index, load_index, load_lexical

from test_index import hash_embed  # noqa: E402  (tests/ is on sys.path)

TESTS = Path(__file__).resolve().parent

WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from test_index import hash_embed
    from tritonrag.index.corpus import Passage
    from tritonrag.index.store import add_to_index, append_to_index

    path, mode, writer, count, gate = Path(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), Path(sys.argv[6])

    def slow_embed(texts):  # deterministic vectors; the pause keeps the writers' work overlapping
        time.sleep(0.3)
        return hash_embed(texts)

    passages = [Passage(f"{writer}-{j}", "T", f"passage {j} of writer {writer}") for j in range(count)]
    (gate.parent / f"ready-{writer}").touch()
    while not gate.exists():  # all writers start together
        time.sleep(0.005)
    add = append_to_index if mode == "append" else add_to_index
    add(path, passages, slow_embed, embedder="toy", progress=False)
""")


def test_concurrent_adds_and_in_place_appends_lose_nothing(tmp_path, report_figure):
    path, gate = tmp_path / "idx", tmp_path / "go"
    base = [Passage(f"base-{j}", "T", f"base passage {j}") for j in range(8)]
    build_index(path, base, hash_embed, embedder="toy", progress=False)
    writers = {"w0": "add", "w1": "append", "w2": "add", "w3": "append"}
    per_writer = 5
    children = {w: subprocess.Popen([sys.executable, "-c", WRITER, str(TESTS), str(path), mode, w,
                                     str(per_writer), str(gate)], stderr=subprocess.PIPE, text=True)
                for w, mode in writers.items()}
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{w}").exists() for w in writers):
        assert time.monotonic() < deadline, "the writers never got ready"
        assert all(c.poll() is None for c in children.values()), "a writer died before the start"
        time.sleep(0.01)
    started = time.perf_counter()
    gate.touch()
    errors = {w: c.communicate(timeout=120)[1] for w, c in children.items()}
    took = time.perf_counter() - started
    assert all(c.returncode == 0 for c in children.values()), errors

    index = load_index(path, embedder="toy", verify="full")
    counts = collections.Counter(p.id for p in index.passages)
    expected = {p.id for p in base} | {f"{w}-{j}" for w in writers for j in range(per_writer)}
    assert set(counts) == expected, f"lost: {sorted(expected - set(counts))}"
    assert max(counts.values()) == 1, f"repeated: {[i for i, n in counts.items() if n > 1]}"
    assert index.passages[:len(base)] == base
    # every vector is its own passage's embedding (not another writer's)
    np.testing.assert_array_equal(index.vectors, hash_embed([p.embedding_text() for p in index.passages]))
    assert load_lexical(path, index.passages, None).count == len(expected)
    report_figure(f"index writers: 8 passages + 4 concurrent writers x {per_writer} (2 add, 2 in-place append): "
                  f"{len(index.passages)}/{len(expected)} passages, each once, vectors match, {took:.1f} s")
