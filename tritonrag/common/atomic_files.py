"""Crash-safe file writes: write beside the target, fsync, then rename.

A reader sees either the old file or the new one, never half of one. The folder that
holds a renamed entry is fsynced after the rename, so that a power loss cannot undo a
write that has returned. `writer_lock` serializes the writers of one path across processes.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


def fsync_directory(folder: Path) -> None:
    """Make the entries of `folder` (names created, renamed or removed in it) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_directories(folder: Path) -> None:
    """mkdir -p, fsyncing each created folder's parent so that the new entries survive a power loss."""
    folder = Path(folder)
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:  # made meanwhile by another process
            pass
        fsync_directory(new.parent)


@contextmanager
def writer_lock(path: Path) -> Iterator[None]:
    """Hold the exclusive lock for writing `path` (a file or a folder), across processes.

    Every read-modify-write of `path` runs under it, so that two writers never both start
    from the same old state. It is fcntl.flock on `.NAME.lock` beside `path`, not inside a
    folder that a replace swaps away. The kernel releases it when its holder exits or is
    killed, so a crashed writer never leaves it held. The lock file stays: removing it
    would let a waiter lock a file that is no longer the one at that name.
    """
    path = Path(path)
    make_directories(path.parent)
    lock_file = path.parent / f".{path.name}.lock"
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another writer of %s (lock %s)", path, lock_file)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    make_directories(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE).

    Returns False where the system or file system cannot (then the caller falls back).
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a))


def recover_directory(path: Path) -> bool:
    """Put back a folder left aside by a replace that crashed between its two renames.

    Only the fallback path of `atomic_directory` (no RENAME_EXCHANGE) has that window.
    """
    path = Path(path)
    if path.exists():
        return False
    aside = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not aside:
        return False
    os.rename(aside[-1], path)
    fsync_directory(path.parent)
    return True


def _staging_prefix(name: str) -> str:
    return f".{name}.tmp-{socket.gethostname()}-{os.getpid()}-"


def remove_abandoned_staging(path: Path) -> list[Path]:
    """Delete staging folders of `path` left by writers of this host that died (SIGKILL, power cut).

    Only folders whose writer process is gone are removed; other hosts' writers (a shared
    volume) and live writers are left alone.
    """
    path = Path(path)
    removed = []
    host = socket.gethostname()
    for staging in path.parent.glob(f".{path.name}.tmp-*"):
        owner, _, rest = staging.name[len(f".{path.name}.tmp-"):].rpartition("-")
        writer_host, _, pid = owner.rpartition("-")
        if writer_host != host or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still writing
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, someone else's
        shutil.rmtree(staging, ignore_errors=True)
        removed.append(staging)
    return removed


@contextmanager
def atomic_directory(path: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a staging folder that becomes `path` whole when the block succeeds.

    A crash at any point leaves `path` as it was before or as the block made it: the
    replace is one atomic exchange of the two folders where Linux offers it, else two
    renames whose gap `recover_directory` repairs on the next use.
    With replace=False a `path` that appeared meanwhile (another process won the
    race to make the same thing) is kept and the staging folder dropped.
    """
    path = Path(path)
    make_directories(path.parent)
    recover_directory(path)
    remove_abandoned_staging(path)
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(path.name), dir=path.parent))
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield staging
        # the files, then the folders (deepest first, so each after its entries), then the swap
        folders = [staging]
        for child in staging.rglob("*"):
            if child.is_dir():
                folders.append(child)
            elif child.is_file():
                with open(child, "rb") as handle:
                    os.fsync(handle.fileno())
        for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
            fsync_directory(folder)
        if not replace:
            try:
                os.rename(staging, path)  # fails if another process made `path` first
            except OSError:
                if not path.exists():
                    raise
            fsync_directory(path.parent)
            return
        if not path.exists():
            os.rename(staging, path)
        elif not exchange_paths(staging, path):  # staging now holds the old folder
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.rename(path, old)
            os.rename(staging, path)
            fsync_directory(path.parent)
            shutil.rmtree(old, ignore_errors=True)
        fsync_directory(path.parent)  # the swap (or rename) is durable before the caller hears of it
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
