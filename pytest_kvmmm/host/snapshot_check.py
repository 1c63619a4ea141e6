"""A host snapshot given by a user, checked before anything reads it: input from someone else.

``--kvm-host-snapshot`` takes a directory or a tarball, possibly from a bug report. Read as
root, a link in it could show ``/etc/shadow`` in the report header, a FIFO could hang the
probe, a tarball could fill the disk, and a CPU list such as ``0-99999999`` could fill memory.
So, before use: a tarball's members are counted and sized and extracted with the standard
library's ``data`` filter (or the same rules by hand on an older Python); a directory may hold
only regular files and directories, and links that stay inside it; every file is bounded in
size; the snapshot's metadata and id lists must parse. Any fault is a ``ValueError`` whose
message is one line naming the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import stat
import tarfile
import zlib
from pathlib import Path

from .kvmapi import KvmAnswers
from .sysfs import Unreadable, parse_id_list

#: Far beyond any snapshot ``capture`` writes (a few hundred small files).
MAX_ENTRIES = 20_000
MAX_FILE_BYTES = 16 << 20
MAX_TOTAL_BYTES = 256 << 20
META = "kvmmm-snapshot.json"
ID_LISTS = ("sys/devices/system/cpu/online", "sys/devices/system/node/online")
#: What reading a broken or hostile archive may raise, besides ``tarfile.TarError``.
_ARCHIVE_ERRORS: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, zlib.error, OSError)
try:
    import lzma

    _ARCHIVE_ERRORS += (lzma.LZMAError,)
except ImportError:  # pragma: no cover - Python built without lzma
    pass


def safe_members(tar: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    """The members to extract: plain files and directories with relative paths inside the
    archive, within the count and size limits; ValueError otherwise (links are skipped)."""
    members, total = [], 0
    try:
        for count, member in enumerate(tar, 1):
            if count > MAX_ENTRIES:
                raise ValueError(f"{path}: more than {MAX_ENTRIES} entries: not a host snapshot")
            if not (member.isfile() or member.isdir()):
                continue
            if member.name.startswith("/") or ".." in Path(member.name).parts:
                raise ValueError(f"{path}: member {member.name[:80]!r} points outside the snapshot")
            if member.size > MAX_FILE_BYTES:
                raise ValueError(f"{path}: member {member.name[:80]!r} is {member.size} bytes, over {MAX_FILE_BYTES}")
            total += member.size
            if total > MAX_TOTAL_BYTES:
                raise ValueError(f"{path}: more than {MAX_TOTAL_BYTES >> 20} MiB unpacked: not a host snapshot")
            members.append(member)
    except _ARCHIVE_ERRORS as exc:
        raise ValueError(f"{path}: a damaged or truncated archive ({type(exc).__name__}: {str(exc)[:80]})") from None
    return members


def extract(path: Path, target: Path) -> None:
    """Unpack the tarball ``path`` into ``target`` within the limits; ValueError on any fault."""
    try:
        with tarfile.open(path) as tar:
            members = safe_members(tar, path)
            if hasattr(tarfile, "data_filter"):  # 3.12, and 3.8.17+/3.9.17+/3.10.12+/3.11.4+
                tar.extractall(target, members=members, filter="data")
            else:  # the same rules by hand: only files and dirs, relative, inside (safe_members)
                tar.extractall(target, members=members)  # noqa: S202
    except ValueError:
        raise
    except _ARCHIVE_ERRORS as exc:
        raise ValueError(f"{path}: a damaged or truncated archive ({type(exc).__name__}: {str(exc)[:80]})") from None


def check_tree(root: Path) -> None:
    """A snapshot directory holds only directories, bounded regular files and links that stay
    inside it; ValueError naming the first entry that does not."""
    inside = root.resolve()
    count = 0
    for directory, dirs, files in os.walk(root, followlinks=False):
        for name in [*dirs, *files]:
            count += 1
            if count > MAX_ENTRIES:
                raise ValueError(f"{root}: more than {MAX_ENTRIES} entries: not a host snapshot")
            entry = Path(directory, name)
            st = os.lstat(entry)
            if stat.S_ISLNK(st.st_mode):
                target = Path(os.path.realpath(entry))
                if target != inside and inside not in target.parents:
                    raise ValueError(f"{entry}: a link pointing outside the snapshot (to {target})")
                st = os.stat(entry) if target.exists() else st
            if stat.S_ISREG(st.st_mode):
                if st.st_size > MAX_FILE_BYTES:
                    raise ValueError(f"{entry}: {st.st_size} bytes, over {MAX_FILE_BYTES}: not a sysfs or procfs file")
            elif not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
                raise ValueError(f"{entry}: neither a file nor a directory (a device, FIFO or socket)")


def check_contents(root: Path) -> None:
    """The snapshot's metadata and the id lists the probe expands parse, within bounds."""
    meta = root / META
    if meta.exists():
        try:
            data = json.loads(meta.read_bytes())  # bounded: check_tree ran first
        except RecursionError:
            raise ValueError(f"{meta}: nested too deeply") from None
        except ValueError as exc:
            raise ValueError(f"{meta}: not JSON ({str(exc)[:80]})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{meta}: not a JSON object")
        if "kvm" in data:
            try:
                KvmAnswers.from_json(data["kvm"])
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{meta}: {str(exc)[:120]}") from None
        page = data.get("page_size")
        if page is not None and (type(page) is not int or page not in (4096, 16384, 65536)):
            raise ValueError(f"{meta}: page_size {str(page)[:20]} is not 4096, 16384 or 65536")
    for rel in ID_LISTS:
        path = root / rel
        if path.is_file():
            try:
                parse_id_list(path.read_text(errors="replace"))
            except Unreadable as exc:
                raise ValueError(f"{path}: {exc}") from None


def check_snapshot(root: Path) -> Path:
    """``root`` when it is a snapshot the probe may read; ValueError (one line) otherwise."""
    check_tree(root)
    check_contents(root)
    return root
