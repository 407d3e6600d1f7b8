"""A vector index on disk: embeddings, passages and a manifest that vouches for them.

The manifest records which embedder made the vectors, their dimension and metric,
the passage count and SHA-256 checksums, so that an index built with another
embedder, or one damaged on disk, is refused with a clear error instead of
silently returning wrong passages. The folder is written whole or not at all.

The folder also holds the BM25 statistics of the passages (`tritonrag.index.bm25`), under
the same checksums. Hashing a 1M-passage index (1.5 GB of vectors) takes seconds, so
after one full check `load_index` writes `verified.json`: each file's size, mtime, ctime
and inode with the hash that was checked. A later load whose files still show exactly
those stat values skips the hashing (what a rename of a new file, a rewrite or a
truncation all change); `verify="full"` always hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from tritonrag.common.atomic_files import atomic_directory, atomic_write_text, writer_lock

from .bm25 import BM25_ARRAYS, BM25_META, BM25Index, TokenizerConfig, usable
from .corpus import Passage

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
PASSAGES = "passages.jsonl"
VERIFIED = "verified.json"


class IndexProblem(Exception):
    """An index that cannot be used; the message says why and what to do."""


class IndexMismatchError(IndexProblem):
    """The index was built for another embedder, dimension or metric."""


class IndexCorruptError(IndexProblem):
    """Files are missing, truncated or do not match their checksums."""


@dataclass
class Index:
    manifest: dict
    vectors: np.ndarray
    passages: list[Passage]

    @property
    def embedder(self) -> str:
        return self.manifest["embedder"]

    @property
    def metric(self) -> str:
        return self.manifest["metric"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _embed(passages: Sequence[Passage], embed_passages: Callable[[list[str]], np.ndarray],
           batch_size: int, progress: bool) -> np.ndarray:
    from tqdm import tqdm

    texts = [p.embedding_text() for p in passages]
    # Batches of similar lengths pad less (pydoc+SQuAD, 1391 passages, 2 cores: 38 s -> 34 s).
    order = np.argsort([len(t) for t in texts], kind="stable")
    vectors = None
    with tqdm(total=len(texts), desc="embedding passages", unit="passage", disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            rows = order[start:start + batch_size]
            chunk = np.asarray(embed_passages([texts[i] for i in rows]), dtype=np.float32)
            if vectors is None:
                vectors = np.empty((len(texts), chunk.shape[1]), dtype=np.float32)
            vectors[rows] = chunk
            bar.update(len(rows))
    return vectors


def _save_vectors(file: Path, parts: Sequence[np.ndarray], rows_per_copy: int = 1 << 16) -> tuple[int, int]:
    """Write the row-wise concatenation of `parts` as one .npy, a slice at a time (no joined copy in RAM)."""
    count, dim = sum(len(p) for p in parts), int(parts[0].shape[1])
    out = np.lib.format.open_memmap(file, mode="w+", dtype=np.float32, shape=(count, dim))
    row = 0
    for part in parts:
        for start in range(0, len(part), rows_per_copy):
            block = np.asarray(part[start:start + rows_per_copy], dtype=np.float32)
            out[row:row + len(block)] = block
            row += len(block)
    out.flush()
    del out
    return count, dim


def _write_index(path: Path, vectors: np.ndarray | Sequence[np.ndarray], passages: Sequence[Passage], embedder: str,
                 metric: str, lexical: BM25Index | None = None) -> dict:
    """Write the files into a staging folder that replaces `path` atomically."""
    if lexical is None:
        lexical = BM25Index.build((p.embedding_text() for p in passages), usable(TokenizerConfig()))
    parts = [vectors] if isinstance(vectors, np.ndarray) else list(vectors)
    with atomic_directory(Path(path)) as staging:
        count, dimension = _save_vectors(staging / EMBEDDINGS, parts)
        with open(staging / PASSAGES, "w", encoding="utf-8") as handle:
            for p in passages:
                handle.write(json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n")
        lexical.save(staging)
        manifest = {
            "format_version": FORMAT_VERSION,
            "embedder": embedder,
            "dimension": dimension,
            "metric": metric,
            "count": count,
            "checksums": {name: _sha256(staging / name) for name in (EMBEDDINGS, PASSAGES, BM25_META, BM25_ARRAYS)},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def build_index(path: Path, passages: Sequence[Passage], embed_passages: Callable[[list[str]], np.ndarray],
                embedder: str, metric: str = "ip", batch_size: int = 64, progress: bool = True) -> dict:
    """Embed `passages` and write the index folder atomically; returns the manifest."""
    if not passages:
        raise ValueError("cannot build an index from an empty corpus")
    vectors = _embed(passages, embed_passages, batch_size, progress)
    with writer_lock(path):  # not while an add is between reading the old index and swapping in its result
        return _write_index(path, vectors, passages, embedder, metric)


def _new_rows(path: Path, passages: Sequence[Passage], embed_passages: Callable[[list[str]], np.ndarray],
              embedder: str, batch_size: int, progress: bool):
    """The index as it is and the embeddings of `passages`, checked to be addable to it
    (new unique ids, the index's dimension): the common start of both ways of adding."""
    current = load_index(path, embedder=embedder)
    if not passages:
        raise ValueError("no passages to add")
    taken = {p.id for p in current.passages}
    clashes = sorted({p.id for p in passages} & taken)
    if clashes or len({p.id for p in passages}) != len(passages):
        raise ValueError(f"passage ids must be new and unique; already in the index or repeated: {clashes[:5]}")
    added = _embed(passages, embed_passages, batch_size, progress)
    if added.shape[1] != current.vectors.shape[1]:
        raise IndexMismatchError(f"new vectors have dimension {added.shape[1]}, the index {current.vectors.shape[1]}")
    return current, added


def add_to_index(path: Path, passages: Sequence[Passage], embed_passages: Callable[[list[str]], np.ndarray],
                 embedder: str, batch_size: int = 64, progress: bool = True) -> dict:
    """Append `passages` to the index at `path`, embedding only them; atomic like build_index.

    The existing vectors are copied, not recomputed. A crash leaves the index as it was.
    Writers of one index (adds, appends, builds, in any process) take turns: each holds
    the index's writer lock from reading the index to swapping in the result.
    """
    with writer_lock(path):
        current, added = _new_rows(path, passages, embed_passages, embedder, batch_size, progress)
        vectors = [current.vectors, added]  # the old rows are copied from the memory map, a slice at a time
        # BM25: the stored counts get the new documents appended (old passages are not re-tokenized)
        lexical = load_lexical(path, current.passages, None)
        lexical.add(p.embedding_text() for p in passages)
        return _write_index(path, vectors, [*current.passages, *passages], embedder, current.metric, lexical)


def _segment_files(manifest: dict) -> list[tuple[str, str]]:
    """(vectors, passages) file names in row order: the base pair, then appended segments."""
    return [(EMBEDDINGS, PASSAGES)] + [(s["embeddings"], s["passages"]) for s in manifest.get("segments", [])]


def _lexical_folder(path: Path) -> Path:
    """Where the index's BM25 statistics lie: the folder itself, or the appended generation's."""
    try:
        return path / json.loads((path / MANIFEST).read_text(encoding="utf-8")).get("lexical", ".")
    except (OSError, ValueError):
        return path


def _fsynced(file: Path) -> Path:
    with open(file, "rb") as handle:
        os.fsync(handle.fileno())
    return file


def append_to_index(path: Path, passages: Sequence[Passage], embed_passages: Callable[[list[str]], np.ndarray],
                    embedder: str, batch_size: int = 64, progress: bool = True) -> dict:
    """Append `passages` in place: new files beside the old ones, then one atomic manifest swap.

    Nothing that exists is rewritten (add_to_index copies every vector): the new rows go to
    `embeddings-N.npy` / `passages-N.jsonl`, the grown BM25 statistics to `lexical-N/`, and
    the manifest that lists them replaces the old one in one rename. A crash before that
    rename leaves the index as it was (the unlisted files are ignored, and overwritten by the
    next append); earlier BM25 folders are removed after it. Like add_to_index it holds the
    index's writer lock throughout, so two appends never both write segment N.
    """
    path = Path(path)
    with writer_lock(path):
        return _append_locked(path, passages, embed_passages, embedder, batch_size, progress)


def _append_locked(path: Path, passages: Sequence[Passage], embed_passages: Callable[[list[str]], np.ndarray],
                   embedder: str, batch_size: int, progress: bool) -> dict:
    current, added = _new_rows(path, passages, embed_passages, embedder, batch_size, progress)
    lexical = load_lexical(path, current.passages, None)
    lexical.add(p.embedding_text() for p in passages)
    manifest = json.loads(json.dumps(current.manifest))
    segment = len(manifest.get("segments", [])) + 1
    names = {"embeddings": f"embeddings-{segment}.npy", "passages": f"passages-{segment}.jsonl"}
    staging = path / f".{names['embeddings']}.{os.getpid()}.tmp"
    _save_vectors(staging, [added])
    os.replace(_fsynced(staging), path / names["embeddings"])
    atomic_write_text(path / names["passages"], "".join(
        json.dumps({"id": p.id, "title": p.title, "text": p.text}) + "\n" for p in passages))
    old_lexical = manifest.get("lexical", ".")
    new_lexical = f"lexical-{segment}"
    with atomic_directory(path / new_lexical) as folder:
        lexical.save(folder)
    checksums = {k: v for k, v in manifest["checksums"].items()
                 if k not in (f"{old_lexical}/{BM25_META}".lstrip("./"), f"{old_lexical}/{BM25_ARRAYS}".lstrip("./"))}
    for name in (names["embeddings"], names["passages"]):
        checksums[name] = _sha256(path / name)
    for name in (BM25_META, BM25_ARRAYS):
        checksums[f"{new_lexical}/{name}"] = _sha256(path / new_lexical / name)
    manifest.update(count=manifest["count"] + len(passages), checksums=checksums, lexical=new_lexical,
                    segments=[*manifest.get("segments", []), {**names, "count": len(passages)}],
                    appended=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    atomic_write_text(path / MANIFEST, json.dumps(manifest, indent=2) + "\n")  # the commit point
    for folder in path.glob("lexical-*"):  # earlier generations (and those of appends killed after the commit)
        if folder.name != new_lexical:
            shutil.rmtree(folder, ignore_errors=True)
    return manifest


def load_lexical(path: Path | None, passages: Sequence[Passage], tokenizer: TokenizerConfig | None) -> BM25Index:
    """The index folder's BM25 statistics when made with `tokenizer` (None: whichever it has), else built."""
    folder = _lexical_folder(Path(path)) if path is not None else None
    if folder is not None and (folder / BM25_META).exists():
        tokenizer = usable(tokenizer) if tokenizer is not None else None
        try:
            lexical = BM25Index.load(folder)
            if (tokenizer is None or lexical.tokenizer_config == tokenizer) and lexical.count == len(passages):
                return lexical
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexCorruptError(f"index {path}: BM25 statistics could not be read: {exc}") from exc
    return BM25Index.build((p.embedding_text() for p in passages), usable(tokenizer or TokenizerConfig()))


def read_manifest(path: Path) -> dict:
    manifest_path = Path(path) / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError) as exc:
        if not Path(path).is_dir():
            what = "no such folder" if not Path(path).exists() else "not a folder"
            raise IndexCorruptError(f"no index at {path} ({what}); build one with "
                                    f"`tritonrag index --corpus ... --out {path}`") from exc
        raise IndexCorruptError(f"no index at {path} (missing {MANIFEST}); build one with `tritonrag index`") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexCorruptError(f"index manifest {manifest_path} is damaged: {exc}") from exc
    missing = {"format_version", "embedder", "dimension", "metric", "count", "checksums"} - set(manifest)
    if missing:
        raise IndexCorruptError(f"index manifest {manifest_path} lacks {sorted(missing)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise IndexMismatchError(f"index {path} has format {manifest['format_version']}, expected {FORMAT_VERSION}")
    return manifest


def _stat_record(file: Path) -> dict:
    st = file.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def _verified_before(path: Path, checksums: dict) -> dict:
    """The files of `checksums` that verified.json vouches for with unchanged stat values."""
    try:
        marker = json.loads((path / VERIFIED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    vouched = {}
    for name, expected in checksums.items():
        try:
            if marker[name] == {**_stat_record(path / name), "sha256": expected}:
                vouched[name] = marker[name]
        except (OSError, KeyError, TypeError):
            continue
    return vouched


def _verify(path: Path, checksums: dict, full: bool) -> None:
    """Hash the files verified.json does not vouch for (all with `full`): after an append only
    the new segment's files are hashed, not the gigabytes already checked."""
    records = {} if full else _verified_before(path, checksums)
    if len(records) == len(checksums):
        return
    for name, expected in checksums.items():
        if name in records:
            continue
        file = path / name
        if not file.exists():
            raise IndexCorruptError(f"index {path} is missing {name}")
        before = _stat_record(file)
        if _sha256(file) != expected:
            raise IndexCorruptError(f"index {path}: {name} does not match its checksum (damaged file)")
        records[name] = {**before, "sha256": expected}
    try:
        atomic_write_text(path / VERIFIED, json.dumps(records, indent=1) + "\n")
    except OSError:  # a read-only index is checked in full on every load
        pass


def load_index(path: Path, embedder: str | None = None, dimension: int | None = None,
               verify: bool | str = True) -> Index:
    """Load and check an index; `embedder`/`dimension` are what the caller will query with.

    `verify`: True checks the checksums (skipped when verified.json vouches for the files),
    "full" always hashes, False trusts the files. The vectors are memory-mapped.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if embedder is not None and manifest["embedder"] != embedder:
        raise IndexMismatchError(
            f"index {path} was built with embedder {manifest['embedder']!r}, but the service embeds "
            f"queries with {embedder!r}; rebuild it with `tritonrag index --embedder {embedder}`")
    if dimension is not None and manifest["dimension"] != dimension:
        raise IndexMismatchError(f"index {path} has dimension {manifest['dimension']}, the embedder gives {dimension}")
    if verify:
        _verify(path, manifest["checksums"], full=verify == "full")
    try:
        parts, passages = [], []
        for vectors_file, passages_file in _segment_files(manifest):
            parts.append(np.load(path / vectors_file, mmap_mode="r"))
            with open(path / passages_file, encoding="utf-8") as handle:
                passages += [Passage(**json.loads(line)) for line in handle if line.strip()]
        # appended segments: one array in memory (a rewrite by add_to_index maps one file again)
        vectors = parts[0] if len(parts) == 1 else np.concatenate(parts)
    except (OSError, ValueError, TypeError) as exc:
        raise IndexCorruptError(f"index {path} could not be read: {exc}") from exc
    if vectors.shape != (manifest["count"], manifest["dimension"]) or len(passages) != manifest["count"]:
        raise IndexCorruptError(
            f"index {path}: {vectors.shape} vectors and {len(passages)} passages, manifest says "
            f"{manifest['count']} x {manifest['dimension']}")
    return Index(manifest, vectors, passages)
