"""A minimal writer of ``newc`` cpio archives, the format the kernel unpacks as an initramfs.

Pure Python, so building a lab image needs no ``cpio`` binary, and deterministic: entries are
written in the order added, with uid/gid 0 and the given mtimes. The kernel does not create
missing parent directories, so :class:`CpioWriter` adds each parent directory before its
first child. Several archives may be concatenated into one initrd (the kernel unpacks each
in turn, later entries replacing earlier ones); ``ino_base`` keeps their inode numbers apart.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

TRAILER = "TRAILER!!!"
_CHUNK = 1 << 20


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def header(name: str, mode: int, size: int, mtime: int, ino: int) -> bytes:
    """One newc header followed by the NUL-terminated name, padded to 4 bytes."""
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, mtime, size, 0, 0, 0, 0, len(encoded), 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
    return head + _pad(len(head))


def archive_path(path: str | PurePosixPath) -> str:
    """``/usr/bin/x`` -> ``usr/bin/x``: archive names are relative to the root, without ``..``."""
    parts = [p for p in PurePosixPath(path).parts if p not in ("/", ".")]
    if not parts or ".." in parts:
        raise ValueError(f"not a path inside the image: {path!r}")
    return "/".join(parts)


class CpioWriter:
    """Write a newc archive to ``out``; call :meth:`close` (or use ``with``) to add the trailer."""

    def __init__(self, out: BinaryIO, ino_base: int = 1, mtime: int = 0) -> None:
        self.out = out
        self.ino = ino_base
        self.mtime = mtime
        self.dirs: set[str] = set()

    def __enter__(self) -> CpioWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _entry(self, name: str, mode: int, data: bytes, mtime: int | None = None) -> None:
        self.out.write(header(name, mode, len(data), self.mtime if mtime is None else mtime, self.ino))
        self.out.write(data + _pad(len(data)))
        self.ino += 1

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent not in self.dirs:
                self.add_dir(parent)

    def add_dir(self, path: str | PurePosixPath, mode: int = 0o755, mtime: int | None = None) -> None:
        name = archive_path(path)
        if name in self.dirs:
            return
        self._parents(name)
        self.dirs.add(name)
        self._entry(name, stat.S_IFDIR | mode, b"", mtime)

    def add_file(
        self, path: str | PurePosixPath, data: bytes, mode: int = 0o644, mtime: int | None = None
    ) -> None:
        name = archive_path(path)
        self._parents(name)
        self._entry(name, stat.S_IFREG | (mode & 0o7777), data, mtime)

    def add_symlink(self, path: str | PurePosixPath, target: str, mtime: int | None = None) -> None:
        name = archive_path(path)
        self._parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode(), mtime)

    def add_host_file(self, path: str | PurePosixPath, source: Path) -> None:
        """A file, symlink or directory from the host, keeping its mode and mtime (pyc files
        compiled on the host stay valid in the guest only if the source mtime is kept)."""
        st = source.lstat()
        mtime = int(st.st_mtime)
        if stat.S_ISLNK(st.st_mode):
            self.add_symlink(path, os.readlink(source), mtime)
        elif stat.S_ISDIR(st.st_mode):
            self.add_dir(path, stat.S_IMODE(st.st_mode), mtime)
        elif stat.S_ISREG(st.st_mode):
            name = archive_path(path)
            self._parents(name)
            self.out.write(header(name, stat.S_IFREG | stat.S_IMODE(st.st_mode), st.st_size, mtime, self.ino))
            with source.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    self.out.write(chunk)
            self.out.write(_pad(st.st_size))
            self.ino += 1
        # device nodes, fifos and sockets are skipped: devtmpfs provides /dev in the guest

    def add_tree(
        self,
        root: Path,
        prefix: str = "/",
        keep: Callable[[PurePosixPath], bool] = lambda _: True,
    ) -> int:
        """Every entry under ``root`` (sorted, symlinks not followed) at ``prefix``; ``keep`` sees
        paths relative to ``root`` and prunes whole directories. Returns the entries added."""
        count = 0
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = PurePosixPath(os.path.relpath(dirpath, root))
            dirnames[:] = sorted(d for d in dirnames if keep(rel_dir / d))
            names: Iterable[str] = sorted([*dirnames, *(f for f in filenames if keep(rel_dir / f))])
            for name in names:
                rel = rel_dir / name
                self.add_host_file(PurePosixPath(prefix) / rel, Path(dirpath) / name)
                count += 1
        return count

    def close(self) -> None:
        if self.out.closed:
            return
        self.out.write(header(TRAILER, 0, 0, 0, 0))
        # pad the archive to 512 bytes like cpio(1) does; the kernel skips the NULs between archives
        self.out.write(b"\0" * (-self.out.tell() % 512))
        self.out.flush()


def read_names(data: bytes) -> list[str]:
    """The entry names of one or more concatenated newc archives (for tests and checks)."""
    names: list[str] = []
    at = 0
    while at + 110 <= len(data):
        if data[at : at + 6] != b"070701":
            at += 4  # NUL padding between concatenated archives
            continue
        size = int(data[at + 54 : at + 62], 16)
        namesize = int(data[at + 94 : at + 102], 16)
        name = data[at + 110 : at + 110 + namesize - 1].decode()
        at += 110 + namesize
        at += -at % 4
        at += size + (-size % 4)
        if name != TRAILER:
            names.append(name)
    return names
