"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one.

The new bytes go to a hidden sibling `.NAME.PID-TOKEN.tmp`, created with mode 0666 less the umask
(or with the mode and owner of the file it replaces), flushed to disk, then renamed over NAME. A
symlink is written through: its target is replaced and the link stays a link. Temporaries that a
killed writer left behind are removed by the next write to the same file: only names of exactly that
form (PID in decimal, TOKEN 16 lower-case hex digits), never another file. `probe_create` shows, before
any work, whether a file can be created beside a target.
"""

import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.errors import WriteError, os_error_text

TEMP_SUFFIX = ".tmp"
TOKEN_BYTES = 8  # the random part of a temporary's name: 16 hex digits
PID_DIGITS = 10  # room kept for the writer's pid, whatever this process's pid is (so the stem never depends on it)
FALLBACK_NAME_MAX = 255  # bytes; POSIX file systems report theirs through pathconf
STALE_AFTER_S = 24 * 3600  # a temporary this old is stale even if its writer's pid is alive (pid reuse)
# The PID-TOKEN part of a temporary `temp_path` names, exactly: the writer's pid as os.getpid() writes it (no leading
# zero, at most PID_DIGITS digits) and TOKEN_BYTES random bytes in lower-case hex. ASCII digits only.
_WRITER = re.compile(rf"([1-9][0-9]{{0,{PID_DIGITS - 1}}})-[0-9a-f]{{{2 * TOKEN_BYTES}}}", re.ASCII)
StrPath = str | os.PathLike[str]


def name_max(directory: StrPath) -> int:
    """The longest file name (in bytes) the file system holding `directory` accepts."""
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return FALLBACK_NAME_MAX


def name_bytes(name: str) -> int:
    """The length of a file name as the file system counts it: bytes of its encoding."""
    return len(os.fsencode(name))


def temp_stem(target_name: str, limit: int) -> str:
    """The part of a temporary's name that identifies its target: the name itself, or, when the name leaves
    no room for the suffix, a prefix of it plus a digest of the whole name (so any legal name has one)."""
    room = limit - name_bytes(f"..{'9' * PID_DIGITS}-{'0' * 2 * TOKEN_BYTES}{TEMP_SUFFIX}")
    if name_bytes(target_name) <= room:
        return target_name
    digest = hashlib.sha256(os.fsencode(target_name)).hexdigest()[:12]
    prefix = target_name
    while name_bytes(prefix) > room - len(digest) - 1:
        prefix = prefix[:-1]
    return f"{prefix}~{digest}"


def temp_path(target: Path) -> Path:
    """A fresh temporary path beside `target`, unique to this process and call."""
    stem = temp_stem(target.name, name_max(target.parent))
    return target.parent / f".{stem}.{os.getpid()}-{secrets.token_hex(TOKEN_BYTES)}{TEMP_SUFFIX}"


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # no such process; no process can have that pid
        return False
    except OSError:  # e.g. PermissionError: the process exists but belongs to someone else
        return True
    return True


def stale_temps(target: Path) -> list[Path]:
    """Temporaries of `target` left by writers that died: regular files named exactly as `temp_path` names them,
    `.NAME.PID-TOKEN.tmp`, whose pid is gone (or that are older than a day). No other file is ever listed: a hidden
    `.NAME.notes.tmp` of the user's, say, is not bnfold's."""
    prefix = f".{temp_stem(target.name, name_max(target.parent))}."
    try:
        siblings = list(os.scandir(target.parent))
    except OSError:
        return []
    stale = []
    for entry in siblings:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)):
            continue
        writer = _WRITER.fullmatch(name[len(prefix) : -len(TEMP_SUFFIX)])
        if writer is None:
            continue  # not a name bnfold writes (or a temporary of another file whose name starts like this one)
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        fresh = time.time() - info.st_mtime < STALE_AFTER_S
        if fresh and _writer_alive(int(writer.group(1))):
            continue  # another process is writing this file right now
        stale.append(Path(entry.path))
    return stale


def remove_stale_temps(target: Path) -> None:
    for path in stale_temps(target):
        try:
            path.unlink()
        except OSError:
            pass


def resolve_target(path: StrPath) -> Path:
    """Where a write to `path` lands: the final target of a symlink (written through), else the path itself."""
    path = Path(path)
    if os.path.islink(path):
        return Path(os.path.realpath(path))
    return path


def _create_temp(target: Path) -> Path:
    """Create an empty temporary for `target`: mode 0666 less the umask, or the mode and owner of the file it
    replaces (best effort for the owner)."""
    tmp = temp_path(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        try:
            old = os.stat(target)
        except FileNotFoundError:
            old = None
        if old is not None and stat.S_ISREG(old.st_mode):
            os.fchmod(fd, stat.S_IMODE(old.st_mode))
            if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                try:
                    os.fchown(fd, old.st_uid, old.st_gid)
                except OSError:
                    pass
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def probe_create(target: Path) -> None:
    """Create and remove an empty temporary beside `target`, as a write to it would: an OSError says why no file can
    be created there."""
    _create_temp(target).unlink()


def _fsync_path(path: StrPath, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: StrPath) -> Iterator[Path]:
    """Yield a temporary path beside `path` (or beside a symlink's target); on success it is flushed and renamed
    over it, else removed. An OSError becomes a WriteError that names `path`; the old file stays as it was."""
    target = resolve_target(path)
    remove_stale_temps(target)
    tmp = None
    try:
        tmp = _create_temp(target)
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, target)
        tmp = None
        try:
            _fsync_path(target.parent, directory=True)
        except OSError:
            pass  # the rename is done; some file systems cannot fsync a directory
    except WriteError:
        raise
    except OSError as e:
        raise WriteError(f"cannot write {path}: {os_error_text(e)}; the previous file, if any, is unchanged") from e
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def atomic_write_bytes(path: StrPath, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: StrPath, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def same_file(a: StrPath, b: StrPath) -> bool:
    """True when paths a and b name one file: the same inode (hard links, symlinks), or the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)
