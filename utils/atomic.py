"""Write a cache file or folder under a temporary name, then rename it; a full disk is a :class:`DataError`.

``atomic_write(final, write, what=..., relocate=...)`` calls ``write(tmp)`` with a sibling temporary path
``.<name>.tmp-<host>-<pid>-<ns>`` and renames it to ``final`` only when ``write`` returned, so a crash, a
Ctrl-C or a full disk never leaves a half-written ``final`` that the next run would read as the cache. The
temporary path is removed on any failure (including ``KeyboardInterrupt``); a process killed outright
(SIGKILL, power loss) can leave one behind, and :func:`remove_stale_temps` deletes those of dead processes
the next time the cache is built.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from utils.errors import DataError

log = logging.getLogger(__name__)

#: how to move the shared preprocessing cache (conf/paths/default.yaml), for the out-of-disk sentence
CACHE_RELOCATE = (
    "point the cache at another disk with paths.cache_dir=<folder> "
    "(or the TRP_CACHE_DIR environment variable)"
)
#: a temporary path left by a process that is not known to be dead is removed only after this many seconds
STALE_AFTER = 24 * 3600.0

_DISK_FULL = {errno.ENOSPC: "the disk is full"}
if hasattr(errno, "EDQUOT"):
    _DISK_FULL[errno.EDQUOT] = "the disk quota is used up"
# the Rust ``tokenizers`` binding raises a plain Exception("No space left on device (os error 28)")
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")
# .<name>.tmp-[<host>-]<pid>-<ns> (the temporary folders of earlier versions have no host: taken as this host's)
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?:(?P<host>[A-Za-z0-9._-]*?)-)?(?P<pid>\d+)-(?P<ns>\d+)$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "host"


def temp_path(final: Path) -> Path:
    """The temporary sibling ``final`` is written under: ``.<name>.tmp-<host>-<pid>-<ns>``."""
    final = Path(final)
    return final.parent / f".{final.name}.tmp-{_host()}-{os.getpid()}-{time.time_ns()}"


def disk_full_errno(exc: BaseException) -> int | None:
    """``errno.ENOSPC`` / ``errno.EDQUOT`` when ``exc`` (or an exception it was raised from) is an
    out-of-disk error, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = exc.errno if isinstance(exc, OSError) else None
        if code is None:
            match = _RUST_OS_ERROR.search(str(exc))
            code = int(match.group(1)) if match else None
        if code in _DISK_FULL:
            return code
        exc = exc.__cause__ or exc.__context__
    return None


def disk_full_error(final: Path, code: int, what: str, relocate: str) -> DataError:
    """The one sentence for an out-of-disk write of ``final``."""
    return DataError(
        f"{_DISK_FULL[code]} ({os.strerror(code)}) while writing the {what} {final}: "
        f"free some space or {relocate}."
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def atomic_write(
    final: Path,
    write: Callable[[Path], Any],
    *,
    what: str = "cache",
    relocate: str = CACHE_RELOCATE,
) -> Path:
    """Call ``write(tmp)`` (it creates a file or a folder at ``tmp``), then rename ``tmp`` to ``final``.

    On any failure ``tmp`` is removed and ``final`` is left as it was. An out-of-disk error (ENOSPC,
    EDQUOT) becomes a :class:`DataError` naming ``final``, that the disk is full, and to free space or
    ``relocate`` (how to write elsewhere, e.g. :data:`CACHE_RELOCATE`); other errors propagate unchanged.
    A folder another process renamed into ``final`` first is kept (theirs is as good as ours).
    """
    final = Path(final)
    tmp = temp_path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # a folder onto a folder: another process won the race; keep theirs
            if not (tmp.is_dir() and final.is_dir()):
                raise
    except Exception as exc:
        code = disk_full_errno(exc)
        if code is not None:
            raise disk_full_error(final, code, what, relocate) from exc
        raise
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)
    return final


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # no harmless probe: assume alive, the age rule still applies
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, owned by someone else
        return True
    return True


def _is_stale(path: str, now_ns: int, max_age: float) -> bool:
    match = _TEMP_NAME.match(os.path.basename(path))
    if match is None:
        return False
    host = match.group("host")
    if (host is None or host == _host()) and not _pid_alive(int(match.group("pid"))):
        return True
    # a live process (its pid may have been reused) or another host's: only when it was named and last
    # written to more than max_age ago
    max_age_ns = max_age * 1e9
    return now_ns - int(match.group("ns")) > max_age_ns and now_ns - _newest_mtime_ns(path) > max_age_ns


def _newest_mtime_ns(path: str) -> int:
    """The latest modification time of ``path`` and, for a folder, of everything in it."""
    try:
        newest = os.lstat(path).st_mtime_ns
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime_ns)
    except FileNotFoundError:  # being renamed or removed right now: not stale
        return time.time_ns()
    return newest


def remove_stale_temps(folder: Path, recursive: bool = False, max_age: float = STALE_AFTER) -> list[Path]:
    """Delete the temporary paths (see :func:`temp_path`) in ``folder`` (and its sub-folders when
    ``recursive``) that no live process is writing.

    A temporary path is stale when it was made on this host by a process that no longer exists, or when
    both its name and the newest modification time inside it are older than ``max_age`` seconds (a pid
    reused by another process, or a temporary path of another host sharing the folder). Returns the
    removed paths.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now_ns = time.time_ns()
    removed = []
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            path = os.path.join(root, name)
            if _TEMP_NAME.match(name) and _is_stale(path, now_ns, max_age):
                _remove(Path(path))
                removed.append(Path(path))
        dirs[:] = [d for d in dirs if not _TEMP_NAME.match(d)] if recursive else []
    if removed:
        log.info("removed %d temporary path(s) of interrupted writes under %s", len(removed), folder)
    return removed
