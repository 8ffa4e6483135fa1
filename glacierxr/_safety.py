"""Nothing the user had is lost: per-output locks, atomic replacement, stale partials, full disks.

One home for the rules every writer follows (:func:`glacierxr.io.write`, checkpoints, the run
folder of ``glacierxr train``, the sample writer and the command line):

=========================  ====================================================================
helper                     what it does
=========================  ====================================================================
output_lock(path)          one writer per output: a second process (or thread) gets
                           :class:`~glacierxr.errors.OutputLockedError` at once, naming the path
locks_output(argument)     the same as a decorator, on the function argument holding the path
partial_path(path)         the hidden temporary sibling an output is written to first
clean_stale(path)          remove partials of ``path`` that no live writer holds (call it while
                           holding the lock); put back an output a killed replace left aside
replace(tmp, path)         move a complete temporary output over ``path`` (atomic for files;
                           folders: the old one is moved aside first and put back on failure)
storage_errors(path)       turn "disk full", "read-only file system" and "permission denied"
                           into :class:`~glacierxr.errors.StorageError`, naming the path, the
                           space needed where known, and the fix
=========================  ====================================================================

Locks are :mod:`filelock` locks on a hidden ``.<name>.lock`` file beside the output, removed
when the run ends (while still held, which filelock 4 tolerates: a waiter that opened the
removed file notices and retries). They rely on ``flock``, which works on local disks. Network file systems (NFS, SMB, FUSE mounts)
support it only in some configurations; where the file system has no ``flock`` at all,
glacierxr warns with :class:`LockUnavailableWarning` and falls back to a lock file whose
existence is the lock (filelock's soft lock), which cannot tell a crashed writer from a live one.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import re
import shutil
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from glacierxr.errors import ConfigError, OutputLockedError, StorageError

__all__ = [
    "LockUnavailableWarning",
    "lock_path",
    "output_lock",
    "locks_output",
    "partial_path",
    "clean_stale",
    "replace",
    "remove",
    "discard",
    "storage_errors",
    "storage_error",
]

_PARTIAL = ".partial-"
_OLD = ".old-"


class LockUnavailableWarning(UserWarning):
    """The file system of an output cannot lock files; concurrent writers are not detected."""


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of an output: a hidden ``.<name>.lock`` sibling."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


# one entry per output this process holds: resolved lock file -> (thread id, depth, lock)
_HELD: dict[str, list] = {}
_HELD_GUARD = threading.Lock()


def _key(path: Path) -> str:
    return os.path.realpath(lock_path(path))


def _busy(path: Path) -> OutputLockedError:
    error = OutputLockedError(
        f"{str(path)!r} is being written by another glacierxr run right now (its lock "
        f"{lock_path(path).name!r} is held). Wait until that run ends, or choose another output."
    )
    error.errno, error.filename = errno.EBUSY, str(path)
    return error


def _acquire(path: Path):
    """A held filelock on ``path``'s lock file, or OutputLockedError when another holds it."""
    import filelock

    lock = filelock.FileLock(lock_path(path), timeout=0, thread_local=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            lock.acquire()
        except filelock.Timeout:
            raise _busy(path) from None
        except OSError as error:
            raise storage_error(error, path) from error  # the output is what the user named
    lock.glacierxr_soft = any("flock not supported" in str(w.message) for w in caught)
    if lock.glacierxr_soft:
        warnings.warn(
            f"The file system of {str(path)!r} cannot lock files (no flock, e.g. some network "
            "disks); glacierxr falls back to a plain lock file and cannot tell a crashed writer "
            "from a live one. Make sure only one run writes there, or write to a local disk.",
            LockUnavailableWarning,
            stacklevel=4,
        )
    return lock


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, *, create_parent: bool = False) -> Iterator[Path]:
    """Hold the lock of ``path`` (an output file or folder) for the ``with`` block.

    The lock file goes beside ``path``; its folder must exist (``create_parent=True`` makes
    it, as a run folder's writer would anyway), else :class:`~glacierxr.errors.ConfigError`.

    Re-entrant in the thread that holds it (a command that locks its output may call
    :func:`glacierxr.io.write`, which locks it too); another process or another thread gets
    :class:`~glacierxr.errors.OutputLockedError` immediately, never a wait. A lock on a folder
    covers everything inside it: the thread holding it writes there without further lock files
    (none is left inside a run folder by a killed run), and any other writer of a path inside
    it is refused.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "result.zarr"
    >>> with output_lock(out):
    ...     with output_lock(out):  # the same thread may nest
    ...         pass
    """
    path = Path(path)
    if create_parent:
        with storage_errors(path.parent, action="create the folder"):
            path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise ConfigError(f"The folder {str(path.parent)!r} does not exist; create it first.")
    key, me = _key(path), threading.get_ident()
    owner = _enclosing_owner(path)
    if owner is not None:  # a writer of a whole folder owns what is inside it: no lock file in it
        if owner[1] != me:
            raise _busy(owner[0])
        yield path
        return
    _refuse_if_enclosing_busy(path)
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is not None and held[0] != me:
            raise _busy(path)
        if held is not None:
            held[1] += 1
    if held is None:
        lock = _acquire(path)
        with _HELD_GUARD:
            held = _HELD[key] = [me, 1, lock]
    try:
        yield path
    finally:
        with _HELD_GUARD:
            held[1] -= 1
            last = held[1] == 0
            if last:
                del _HELD[key]
        if last:
            _release(held[2], path)


def _enclosing_owner(path: Path) -> tuple[Path, int] | None:
    """A folder containing ``path`` whose lock this process holds, and the holding thread."""
    with _HELD_GUARD:
        for folder in Path(os.path.realpath(path)).parents:
            held = _HELD.get(_key(folder))
            if held is not None:
                return folder, held[0]
    return None


def _refuse_if_enclosing_busy(path: Path) -> None:
    """OutputLockedError when another process holds the lock of a folder containing ``path``."""
    for folder in Path(os.path.realpath(path)).parents:
        if not lock_path(folder).exists():
            continue
        try:
            lock = _acquire(folder)  # raises OutputLockedError naming the folder when it is held
        except OutputLockedError:
            raise
        except (OSError, StorageError):  # cannot even open it (another user's file): cannot tell
            continue
        _release(lock, folder)


def _release(lock, path: Path) -> None:
    """Unlink the lock file while still holding it, then unlock: no empty file is left behind.

    A process that opened the old file meanwhile finds it unlinked once it gets the lock and
    takes a new one (filelock checks the link count), so the lock stays exclusive.
    """
    if not lock.glacierxr_soft:  # a soft lock removes its own file
        with contextlib.suppress(OSError):
            os.unlink(lock_path(path))
    lock.release()


def locks_output(argument: str, *, create_parent: bool = False) -> Callable:
    """Decorator: hold :func:`output_lock` on the path passed as ``argument`` during the call."""

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with output_lock(bound.arguments[argument], create_parent=create_parent):
                return function(*args, **kwargs)

        return locked

    return decorate


def partial_path(path: str | os.PathLike) -> Path:
    """A new hidden temporary sibling ``.<name>.partial-<random>`` to write ``path`` into."""
    path = Path(path)
    return path.parent / f".{path.name}{_PARTIAL}{uuid.uuid4().hex[:12]}"


def _siblings(path: Path, marker: str) -> list[Path]:
    pattern = re.compile(re.escape(f".{path.name}{marker}") + r"[0-9a-f]{12}$")
    try:
        return sorted(p for p in path.parent.iterdir() if pattern.match(p.name))
    except OSError:
        return []


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove what killed writers of ``path`` left behind; call it while holding its lock.

    Holding :func:`output_lock` proves that no live writer owns a ``.<name>.partial-*``
    sibling, so each is removed. A ``.<name>.old-*`` sibling is an earlier output that a
    killed :func:`replace` had moved aside: it is put back when ``path`` is missing, removed
    otherwise. Returns the paths removed or restored.
    """
    path = Path(path)
    touched = []
    for partial in _siblings(path, _PARTIAL):
        remove(partial)
        touched.append(partial)
    for old in _siblings(path, _OLD):
        if not (path.exists() or path.is_symlink()):
            os.replace(old, path)
        else:
            remove(old)
        touched.append(old)
    return touched


def remove(path: Path) -> None:
    """Delete a file, a symlink (not its target) or a folder tree; nothing if absent."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def discard(tmp: Path, *, settle_s: float = 2.0) -> None:
    """Remove the partial output ``tmp`` of a failed write, and again if it comes back.

    When one Dask task fails, the threaded scheduler raises at once while other tasks may still
    be writing their chunks into ``tmp`` (re-creating folders); removal is repeated until
    ``tmp`` has stayed gone for a moment (at most ``settle_s`` seconds). What still appears
    later is a stale partial that the next writer of the output removes.
    """
    deadline = time.monotonic() + settle_s
    gone_since = None
    while time.monotonic() < deadline:
        remove(tmp)
        if tmp.exists() or tmp.is_symlink():
            gone_since = None
        elif gone_since is None:
            gone_since = time.monotonic()
        elif time.monotonic() - gone_since > 0.2:
            return
        time.sleep(0.02)


def replace(tmp: Path, path: Path) -> None:
    """Move the complete output ``tmp`` to ``path``, replacing what is there.

    Files (and a file over a file) move with one atomic :func:`os.replace`. A folder cannot
    replace a folder atomically: the old one is first renamed to ``.<name>.old-<random>``, the
    new one moved in, then the old one removed; on failure the old one is put back, and a
    process killed between the two renames leaves the old one for :func:`clean_stale`.
    """
    tmp, path = Path(tmp), Path(path)
    if not (path.exists() or path.is_symlink()) or (tmp.is_file() and path.is_file()):
        os.replace(tmp, path)
        return
    old = path.parent / f".{path.name}{_OLD}{uuid.uuid4().hex[:12]}"
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    remove(old)


# ------------------------------------------------------------------------------------------
# full disks, read-only file systems, permissions
# ------------------------------------------------------------------------------------------
_KIND_BY_ERRNO = {
    errno.ENOSPC: "full",
    errno.EDQUOT: "full",
    errno.EFBIG: "full",
    errno.EROFS: "read-only",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
}
# libraries that lose the errno on the way (GDAL/libtiff, torch's zip writer, HDF5)
_KIND_BY_TEXT = (
    (re.compile(r"no space left|disk quota|ENOSPC|file too large", re.I), "full"),
    (re.compile(r"read-only file system|EROFS", re.I), "read-only"),
    (re.compile(r"permission denied|EACCES|operation not permitted", re.I), "permission"),
)
# generic write failures whose cause is told by the free space left
_WRITE_FAILED = re.compile(
    r"write error|write failed|error writing|I/?O error|unexpected pos|PytorchStreamWriter|TIFF\w*Write"
    r"|TIFFAppendToStrip|HDF error",
    re.I,
)
_LOW_SPACE_BYTES = 1 << 20


def _free_bytes(path: Path) -> int | None:
    for folder in (path.parent, *path.parent.parents):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(folder).free
    return None


def _kind_of(error: BaseException, path: Path, needed: int | None) -> str | None:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    for item in chain:
        kind = _KIND_BY_ERRNO.get(getattr(item, "errno", None))
        if kind is not None and isinstance(item, OSError):
            return kind
    text = " ".join(str(item) for item in chain)
    for pattern, kind in _KIND_BY_TEXT:
        if pattern.search(text):
            return kind
    if _WRITE_FAILED.search(text):
        free = _free_bytes(path)
        if free is not None and free < max(needed or 0, _LOW_SPACE_BYTES):
            return "full"
    return None


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # pragma: no cover


def storage_error(
    error: BaseException, path: str | os.PathLike, *, needed: int | None = None, action: str = "write"
) -> BaseException:
    """The :class:`StorageError` for ``error`` (a failed write to ``path``), or ``error`` itself
    when it is not a full disk, a read-only file system or a permission problem."""
    if isinstance(error, StorageError):
        return error
    path = Path(path)
    kind = _kind_of(error, path, needed)
    if kind is None:
        return error
    where = str(path.parent if str(path.parent) else ".")
    if kind == "full":
        free = _free_bytes(path)
        need = f"; it needs about {_size(needed)}" if needed else ""
        have = f", {_size(free)} free" if free is not None else ""
        message = (
            f"Could not {action} {str(path)!r}: the disk is full ({where}{have}{need}). Free "
            "some space there or choose an output on another disk; nothing earlier was replaced."
        )
        code = errno.ENOSPC
    elif kind == "read-only":
        message = (
            f"Could not {action} {str(path)!r}: {where} is on a read-only file system. Choose an "
            "output on a writable disk."
        )
        code = errno.EROFS
    else:
        message = (
            f"Could not {action} {str(path)!r}: permission denied in {where}. Choose a folder you "
            "may write to, or fix its permissions."
        )
        code = errno.EACCES
    translated = StorageError(message)
    translated.errno, translated.filename = code, str(path)
    return translated


@contextlib.contextmanager
def storage_errors(
    path: str | os.PathLike, *, needed: int | None = None, action: str = "write"
) -> Iterator[None]:
    """Re-raise disk-full, read-only and permission failures inside the block as
    :class:`~glacierxr.errors.StorageError` (also an ``OSError``); other errors pass unchanged.

    Examples
    --------
    >>> import errno
    >>> with storage_errors("/data/out.zarr", needed=2048):
    ...     raise OSError(errno.ENOSPC, "No space left on device")
    Traceback (most recent call last):
    ...
    glacierxr.errors.StorageError: Could not write '/data/out.zarr': the disk is full (/data...
    """
    try:
        yield
    except Exception as error:
        translated = storage_error(error, path, needed=needed, action=action)
        if translated is error:
            raise
        raise translated from error
