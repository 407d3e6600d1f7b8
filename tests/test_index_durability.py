"""A writer that dies between any two of its steps leaves the index wholly old or wholly new,
and the swap is made durable (folders fsynced after their entries change).

The crash test is deterministic: a forked writer counts its file-system changes with an
audit hook (opens for writing, renames, removals, mkdir, the renameat2 call) and exits
before the k-th, for k = 1, 2, ... until one run completes. After each crash the index on
disk must be the old one or the new one, checksums and vectors included, and the next
write must succeed. Negative controls: the same check run with the atomic exchange replaced
by rmtree + rename, and with the manifest swap of an in-place append replaced by unlink +
write, must find a crash point that leaves something else.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tritonrag.common import atomic_files as storage
from tritonrag.index.corpus import Passage
from tritonrag.index.store import append_to_index, build_index

from test_index import hash_embed  # noqa: E402  (tests/ is on sys.path)

TESTS = Path(__file__).resolve().parent

DRIVER = textwrap.dedent("""
    import json, os, shutil, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from test_index import hash_embed
    from tritonrag.index import store as index_module
    from tritonrag.common import atomic_files as storage
    from tritonrag.index.corpus import Passage
    from tritonrag.index.store import add_to_index, append_to_index, build_index, load_index

    root, mode, swap = Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    CRASHED = 86
    OLD = [Passage(f"old-{i}", "T", f"old passage {i}") for i in range(6)]
    NEW = [Passage(f"new-{i}", "T", f"new passage {i}") for i in range(4)]

    if swap == "fallback":  # where RENAME_EXCHANGE is missing: rename aside, rename in, repaired on next use
        storage.exchange_paths = lambda a, b: False
    elif swap == "rmtree-rename":  # negative control: a replace that is not atomic
        def rmtree_rename(staging, path):
            shutil.rmtree(path)
            os.rename(staging, path)
            return True
        storage.exchange_paths = rmtree_rename
    elif swap == "unlink-write":  # negative control: a manifest swap that is not atomic
        atomic_write_text = index_module.atomic_write_text
        def unlink_then_write(file, text):
            if Path(file).name == "manifest.json":
                Path(file).unlink()
            atomic_write_text(file, text)
        index_module.atomic_write_text = unlink_then_write

    template = root / "template"
    if mode == "append":  # an index that already has a segment and a BM25 generation of its own
        build_index(template / "idx", OLD[:3], hash_embed, embedder="toy", progress=False)
        append_to_index(template / "idx", OLD[3:], hash_embed, embedder="toy", progress=False)
    else:
        build_index(template / "idx", OLD, hash_embed, embedder="toy", progress=False)
    expected = {"old": [p.id for p in OLD], "new": [p.id for p in (NEW if mode == "build" else OLD + NEW)]}

    def write(path):
        if mode == "build":
            build_index(path, NEW, hash_embed, embedder="toy", progress=False)
        elif mode == "add":
            add_to_index(path, NEW, hash_embed, embedder="toy", progress=False)
        else:
            append_to_index(path, NEW, hash_embed, embedder="toy", progress=False)

    def changes(event, args, inside):
        if event == "ctypes.call_function":  # renameat2
            return True
        if event == "open":
            flags = args[2] or 0
            if not flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
                return False
        elif event not in ("os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.link",
                           "os.symlink", "shutil.rmtree"):
            return False
        target = os.fsdecode(args[0]) if isinstance(args[0], (str, bytes, os.PathLike)) else ""
        return not os.path.isabs(target) or target.startswith(inside)  # relative: rmtree's own steps

    def state(path):
        try:
            index = load_index(path, embedder="toy", verify="full")
        except Exception as exc:
            return f"unloadable ({type(exc).__name__}: {exc})"
        ids = [p.id for p in index.passages]
        if not np.array_equal(index.vectors, hash_embed([p.embedding_text() for p in index.passages])):
            return "vectors do not match their passages"
        return next((name for name, want in expected.items() if ids == want), f"mixed: {ids}")

    for k in range(1, 1000):
        work = root / f"k{k}"
        shutil.copytree(template, work)
        path = work / "idx"
        pid = os.fork()
        if pid == 0:
            seen = [0]
            def crash_before_change(event, args):
                if changes(event, args, str(work)):
                    seen[0] += 1
                    if seen[0] == k:
                        os._exit(CRASHED)
            sys.addaudithook(crash_before_change)
            try:
                write(path)
            except BaseException:
                os._exit(3)
            os._exit(0)
        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        if swap == "fallback":
            storage.recover_directory(path)  # what the next writer does first
        result = {"k": k, "exit": code, "state": state(path) if code in (0, CRASHED) else "writer failed"}
        try:  # the next write works whatever the crash left
            add_to_index(path, [Passage("next", "", "next")], hash_embed, embedder="toy", progress=False)
            result["next"] = [p.id for p in load_index(path, embedder="toy", verify="full").passages][-1]
        except Exception as exc:
            result["next"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(result), flush=True)
        shutil.rmtree(work)
        if code != CRASHED:
            break
""")


def _crash_at_every_step(tmp_path, mode, swap):
    run = subprocess.run([sys.executable, "-c", DRIVER, str(TESTS), str(tmp_path), mode, swap],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


@pytest.mark.parametrize("swap", ["exchange", "fallback"])
@pytest.mark.parametrize("mode", ["build", "add", "append"])
def test_a_crash_between_any_two_steps_leaves_the_old_or_the_new_index(tmp_path, mode, swap, report_figure):
    if swap == "exchange":
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        if not storage.exchange_paths(tmp_path / "a", tmp_path / "b"):
            pytest.skip("this file system has no RENAME_EXCHANGE")
    results = _crash_at_every_step(tmp_path, mode, swap)
    assert results[-1]["exit"] == 0 and len(results) >= 8, results  # the write ran to its end, in many steps
    broken = [r for r in results if r["state"] not in ("old", "new")]
    assert not broken, f"{len(broken)} of {len(results)} crash points left neither index, e.g. {broken[:2]}"
    states = [r["state"] for r in results]
    first_new = states.index("new")
    assert states == ["old"] * first_new + ["new"] * (len(states) - first_new), states  # once new, new
    assert first_new > 0  # some crashes came before the swap
    assert all(r["next"] == "next" for r in results), results
    report_figure(f"index {mode} ({swap}): crash before each of {len(results) - 1} file-system steps: "
                  f"{first_new} x old index, {len(results) - 1 - first_new} x new, the next write ok after each")


@pytest.mark.parametrize("mode, swap", [("build", "rmtree-rename"), ("add", "rmtree-rename"),
                                        ("append", "unlink-write")])
def test_the_crash_check_catches_a_swap_that_is_not_atomic(tmp_path, mode, swap):
    states = [r["state"] for r in _crash_at_every_step(tmp_path, mode, swap)]
    assert any(s.startswith("unloadable") for s in states), states


def _recorder(monkeypatch):
    """Record renames, exchanges and fsyncs (by the path of the fsynced descriptor), in order."""
    events = []
    rename, replace, fsync, exchange = os.rename, os.replace, os.fsync, storage.exchange_paths

    def on_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def on_rename(src, dst, *a, **k):
        events.append(("rename", os.fspath(src), os.fspath(dst)))
        return rename(src, dst, *a, **k)

    def on_replace(src, dst, *a, **k):
        events.append(("rename", os.fspath(src), os.fspath(dst)))
        return replace(src, dst, *a, **k)

    def on_exchange(a, b):
        swapped = exchange(a, b)
        if swapped:
            events.append(("rename", os.fspath(a), os.fspath(b)))
        return swapped

    monkeypatch.setattr(os, "fsync", on_fsync)
    monkeypatch.setattr(os, "rename", on_rename)
    monkeypatch.setattr(os, "replace", on_replace)
    monkeypatch.setattr(storage, "exchange_paths", on_exchange)
    return events


def _last_rename_to(events, target):
    return max(i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(target))


def _fsynced_after(events, position, folder):
    return ("fsync", str(folder)) in events[position + 1:]


def test_build_fsyncs_the_new_folder_and_its_parents(tmp_path, monkeypatch):
    path = tmp_path / "new" / "idx"
    events = _recorder(monkeypatch)
    build_index(path, [Passage("a", "", "a")], hash_embed, embedder="toy", progress=False)
    swap = _last_rename_to(events, path)
    staging = events[swap][1]
    assert ("fsync", staging) in events[:swap], "the new folder's entries were not made durable before the swap"
    assert _fsynced_after(events, swap, path.parent), "the folder holding the index was not fsynced after the swap"
    assert ("fsync", str(tmp_path)) in events, "the new parent folder's own entry was not fsynced"


def test_a_replace_and_an_in_place_append_fsync_the_folder_after_the_swap(tmp_path, monkeypatch):
    path = tmp_path / "idx"
    build_index(path, [Passage("a", "", "a")], hash_embed, embedder="toy", progress=False)
    events = _recorder(monkeypatch)
    build_index(path, [Passage("b", "", "b")], hash_embed, embedder="toy", progress=False)
    assert _fsynced_after(events, _last_rename_to(events, path), tmp_path)
    events.clear()
    append_to_index(path, [Passage("c", "", "c")], hash_embed, embedder="toy", progress=False)
    assert _fsynced_after(events, _last_rename_to(events, path / "manifest.json"), path), \
        "the append's manifest swap (its commit) was not fsynced"
