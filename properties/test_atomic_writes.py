"""Laws of atomic writes: modes, temporaries that always fit, stale ones found, failures that leave the old file."""

import errno
import os
import re
import stat
import time

from hypothesis import example, given
from hypothesis import strategies as st

from core.atomic import (
    atomic_path,
    atomic_write_bytes,
    name_max,
    stale_temps,
    temp_path,
)
from core.errors import WriteError

umasks = st.integers(0, 0o777)
modes = st.integers(0, 0o777).map(lambda m: m | 0o600)  # the owner can still read and write
hex_tokens = st.text(st.sampled_from("0123456789abcdef"), min_size=16, max_size=16)
DEAD_PID = 4294967294  # no process has this pid: os.kill cannot even address it
OUR_FORM = re.compile(r"[1-9][0-9]*-[0-9a-f]{16}")  # PID-TOKEN as temp_path writes it (ASCII only)


@st.composite
def near_misses(draw):
    """A PID-TOKEN tail with one thing wrong: a token one digit short or long, a capital or non-hex letter in it, a
    pid with a leading zero, none or a non-ASCII digit, a missing dash, an extra dot-separated word."""
    pid, token = str(draw(st.integers(1, DEAD_PID))), draw(hex_tokens)
    i = draw(st.integers(0, 15))
    return draw(st.sampled_from([
        f"{pid}-{token[:-1]}", f"{pid}-{token}0", f"{pid}-{token[:i]}{token[i].upper() if token[i] > '9' else 'A'}"
        f"{token[i + 1:]}", f"{pid}-{token[:i]}g{token[i + 1:]}", f"0{pid}-{token}", f"-{token}",
        f"{pid[:-1]}\u0663-{token}", f"{pid}{token}", f"{pid}-{token}.notes", f"notes.{pid}-{token}",
        f"{pid}-{token} ", f"{pid}_{token}"]))


other_tails = st.one_of(near_misses(), st.text(st.sampled_from("0123456789abcdefABCXYZ-._ é\u0663"), min_size=1,
                                               max_size=40)).filter(lambda tail: not OUR_FORM.fullmatch(tail))
file_names = st.text(st.sampled_from("abcxyz.-_0123456789é"), min_size=1, max_size=255).filter(
    lambda n: n not in (".", "..") and len(os.fsencode(n)) <= 255)


@given(umask=umasks)
@example(umask=0o022)
@example(umask=0o077)
def test_new_file_mode_is_0666_less_the_umask(umask, tmp_path_factory):
    """mode(new file) = 0o666 & ~umask.

    The temporary is created with open(..., 0o666), which the kernel masks with the umask, and
    rename keeps the mode; nothing chmods a new file.
    """
    path = tmp_path_factory.mktemp("w") / "out.bin"
    previous = os.umask(umask)
    try:
        atomic_write_bytes(path, b"data")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


@given(mode=modes, umask=umasks)
def test_replaced_file_keeps_its_mode(mode, umask, tmp_path_factory):
    """mode(after replacing f) = mode(f), whatever the umask.

    The temporary is given the old file's mode (fchmod ignores the umask) before it is renamed over it.
    """
    path = tmp_path_factory.mktemp("w") / "out.bin"
    path.write_bytes(b"old")
    path.chmod(mode)
    previous = os.umask(umask)
    try:
        atomic_write_bytes(path, b"new")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_bytes() == b"new"


@given(name=file_names)
@example(name="m" * 255)
@example(name="é" * 127)
def test_every_legal_name_has_a_temporary_that_fits_and_is_found_when_stale(name, tmp_path_factory):
    """len(temp(name)) ≤ NAME_MAX for every legal name, and a dead writer's temporary of name is stale for name only.

    The stem is the name itself while it leaves room for `.PID-TOKEN.tmp` (pid width fixed), else a
    prefix plus a digest of the whole name; stale_temps matches the stem and a PID-TOKEN tail.
    """
    folder = tmp_path_factory.mktemp("t")
    target = folder / name
    tmp = temp_path(target)
    assert len(os.fsencode(tmp.name)) <= name_max(folder)
    stem = tmp.name[: -len(".tmp")].rsplit(".", 1)[0]
    dead = folder / f"{stem}.4294967294-{'00ff' * 4}.tmp"  # no process has this pid
    dead.write_bytes(b"partial")
    assert stale_temps(target) == [dead]
    longer = folder / (name[:-1] + "Z") if len(os.fsencode(name + "Z")) > 255 else folder / (name + "Z")
    assert stale_temps(longer) == []


@given(tails=st.lists(other_tails, min_size=1, max_size=5, unique=True), token=hex_tokens)
@example(tails=["notes"], token="0" * 16)
@example(tails=["4294967294-00aa", "k2j4x_9q", "123-ab"], token="f" * 16)
def test_only_bnfold_own_temporaries_are_ever_removed(tails, token, tmp_path_factory):
    """.NAME.T.tmp survives every write of NAME unless T is bnfold's own PID-TOKEN and its writer is dead.

    PID-TOKEN exactly: the pid in decimal without a leading zero, then 16 lower-case hex digits (ASCII only).

    Cleanup deletes what it matches, so it matches only the names temp_path writes: any other hidden `.NAME.*.tmp`
    (a user's notes, an editor's swap file) may hold data bnfold never wrote. The drawn files are older than a day
    and their would-be pids dead, so only the form of the name keeps them; the temporary of bnfold's form beside them
    shows that the cleanup ran.
    """
    folder = tmp_path_factory.mktemp("w")
    target = folder / "m.pt"
    theirs = [folder / f".m.pt.{tail}.tmp" for tail in tails]
    ours = folder / f".m.pt.{DEAD_PID}-{token}.tmp"
    old = time.time() - 2 * 24 * 3600
    for path in [*theirs, ours]:
        path.write_bytes(path.name.encode())
        os.utime(path, (old, old))
    assert stale_temps(target) == [ours]
    atomic_write_bytes(target, b"new")
    assert all(path.read_bytes() == path.name.encode() for path in theirs)
    assert not ours.exists() and target.read_bytes() == b"new"


class Boom(Exception):
    pass


@given(old=st.one_of(st.none(), st.binary(max_size=64)), new=st.binary(max_size=64),
       fail_at=st.sampled_from(["body", "fsync", "replace", None]))
def test_a_write_leaves_the_old_file_or_the_whole_new_one(old, new, fail_at, tmp_path_factory):
    """After a write, the file holds `new` if it succeeded, else exactly what it held before (or is absent); no
    temporary remains either way.

    The bytes go to a temporary that is flushed and renamed only when complete; every failure path
    removes the temporary, and rename is atomic.
    """
    folder = tmp_path_factory.mktemp("w")
    path = folder / "out.bin"
    if old is not None:
        path.write_bytes(old)
    saved = os.fsync, os.replace

    def fail(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    if fail_at == "fsync":
        os.fsync = fail
    if fail_at == "replace":
        os.replace = fail
    try:
        with atomic_path(path) as tmp:
            tmp.write_bytes(new[: len(new) // 2])
            if fail_at == "body":
                raise Boom()
            tmp.write_bytes(new)
    except Boom:
        assert fail_at == "body"
    except WriteError as e:
        assert fail_at in ("fsync", "replace")
        assert str(e).startswith(f"cannot write {path}: no space left on device")
    finally:
        os.fsync, os.replace = saved
    expected = new if fail_at is None else old
    assert (path.read_bytes() if path.exists() else None) == expected
    assert [p.name for p in folder.iterdir()] == ([] if expected is None else ["out.bin"])
