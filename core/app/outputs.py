"""Output paths, proven usable before any work starts: a file (train --out, fold -o) or a directory of reports
(reproduce --out). A refusal is a UsageError naming the option, the path and what to give instead."""

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from core.app.errors import UsageError
from core.atomic import StrPath, name_bytes, name_max, probe_create, resolve_target, same_file
from core.errors import os_error_text


def check_output_file(path: StrPath, option: str, protected: Mapping[str, StrPath | None] | None = None) -> Path:
    """Prove that a later atomic write to `path` can succeed, before any work: returns where it will land.

    Refuses: an empty path, a directory, anything but a regular file or a new path (devices such as /dev/full,
    pipes), a symlink loop, a read-only file, a missing parent directory, a name longer than the file system
    allows, a place where no file can be created, and any path in `protected` ({description: path}, e.g. the
    names file the command reads).
    """
    text = os.fspath(path)
    if not text:
        raise UsageError(f"{option}: the path is empty; give a file path such as model.pt")
    if text.endswith(os.sep) or os.path.isdir(text):
        raise UsageError(f"{option} {text}: is a directory; give a file path inside it, such as "
                         f"{os.path.join(text, 'model.pt')}")
    try:
        os.stat(text)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UsageError(f"{option} {text}: is a loop of symlinks; point it at a file or choose another "
                             f"path") from e
    target = resolve_target(text)
    for what, other in (protected or {}).items():
        if other is not None and same_file(target, other):
            raise UsageError(f"{option} {text}: is {what} ({other}); writing there would destroy it; "
                             f"choose another path")
    if os.path.exists(target):
        mode = os.stat(target).st_mode
        if not stat.S_ISREG(mode):
            raise UsageError(f"{option} {text}: is not a regular file (a device, pipe or socket); "
                             f"bnfold writes only regular files: choose a file path")
        if not os.access(target, os.W_OK):
            if read_only_file_system(target):
                raise UsageError(f"{option} {text}: is on a read-only file system, where no file can be replaced; "
                                 f"choose a path on a writable one")
            raise UsageError(f"{option} {text}: the file is read-only; make it writable (chmod u+w) "
                             f"or choose another path")
    parent = target.parent
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise UsageError(f"{option} {text}: the directory {parent} {what}; create it first (mkdir -p {parent}) "
                         f"or choose another path")
    limit = name_max(parent)
    if name_bytes(target.name) > limit:
        raise UsageError(f"{option} {text}: the file name is {name_bytes(target.name)} bytes, longer than the "
                         f"{limit} this file system allows; choose a shorter name")
    try:
        probe_create(target)
    except OSError as e:
        if e.errno == errno.EROFS or read_only_file_system(parent):
            raise UsageError(f"{option} {text}: {parent} is on a read-only file system; choose a path on a writable "
                             f"one") from e
        raise UsageError(f"{option} {text}: cannot create files in {parent} ({os_error_text(e)}); "
                         f"choose a writable place") from e
    return target


def read_only_file_system(path: StrPath) -> bool:
    """Whether `path` lies on a file system mounted read-only (where chmod cannot help): statvfs's ST_RDONLY."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs on this platform, or the path is gone
        return False


REPORTS = "reproduce writes a directory of reports and plots: choose a directory path"


def check_output_dir(path: StrPath, option: str, names: StrPath | None, report: str, purpose: str = REPORTS) -> Path:
    """A directory of outputs at `path` (reproduce's reports, bench's saved ratios), made if missing, in which
    `report` (the file written last) can be written; never a file such as the names file. What is already there is
    left alone until the run replaces it. `purpose` says, in a refusal, why `path` must be a directory."""
    text = os.fspath(path)
    if not text:
        raise UsageError(f"{option}: the path is empty; give a directory path such as runs/first")
    if os.path.lexists(path) and not os.path.isdir(path):
        what = "the names file" if names is not None and same_file(path, names) else "a file"
        raise UsageError(f"{option} {path}: is {what}, not a directory; {purpose}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        if e.errno == errno.EROFS:
            raise UsageError(f"{option} {path}: cannot be created on a read-only file system; choose a path on a "
                             f"writable one") from e
        raise UsageError(f"{option} {path}: cannot create this directory ({os_error_text(e)}); "
                         f"choose a writable place") from e
    check_output_file(os.path.join(path, report), option)
    return Path(path)
