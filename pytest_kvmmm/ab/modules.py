"""Swapping the KVM modules of a live x86 host, journalled, and always putting the stock ones back.

``kvm.ko`` plus ``kvm-amd.ko`` or ``kvm-intel.ko`` can be unloaded while no VM is alive (every
open ``/dev/kvm`` holds a reference on the vendor module) and replaced by another build of the
same kernel (``provision/kvm_modules.py``). Before the first unload, the journal records what
was loaded: the vendor module, each module's GNU build id (``/sys/module/<m>/notes``), the file
it came from (found by that build id under ``/lib/modules/<release>``) and its parameters. The
stock modules go back at the end, after a failed ``insmod`` at once, on Ctrl-C or SIGTERM (the
caller's ``finally``), and after a crash by the next ``kvmmm-ab`` (``restore_stale``).

Which build is loaded is decided by build id, never by name: a swap is verified, and a restore
knows whether it has anything to do.

The journal is input, not instructions: it is read only from a directory owned by this user
and not writable by others, and it only names module files whose build id is checked before
they are loaded.
"""

from __future__ import annotations

import json
import lzma
import os
import struct
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..coordination.liveness import pid_alive
from ..coordination.safefs import private_dir

VENDORS = ("kvm_amd", "kvm_intel")
NOTE_GNU_BUILD_ID = 3


class SwapError(Exception):
    """A swap that cannot be done or undone; the message is one line saying what to do."""


@dataclass(frozen=True)
class ModuleFiles:
    """The files of one KVM build: ``kvm`` and the vendor module, by module name."""

    label: str
    files: Mapping[str, str]  # module name (kvm, kvm_amd) -> path of its .ko (.ko.xz)


@dataclass(frozen=True)
class Loaded:
    """What is loaded now: vendor module, build id and parameters of each KVM module."""

    vendor: str
    build_ids: Mapping[str, str]
    params: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def elf_build_id(data: bytes) -> str | None:
    """The GNU build id of an ELF64 little-endian object, from its ``.note.gnu.build-id`` section."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return None
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    if not shoff or shstrndx >= shnum or shoff + shnum * shentsize > len(data):
        return None

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, str_off, str_size = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        end = data.find(b"\0", str_off + name, str_off + str_size)
        if data[str_off + name:end] == b".note.gnu.build-id":
            return note_build_id(data[offset:offset + size])
    return None


def note_build_id(note: bytes) -> str | None:
    """The descriptor of the first ``NT_GNU_BUILD_ID`` note in a notes blob, as hex."""
    pos = 0
    while pos + 12 <= len(note):
        namesz, descsz, kind = struct.unpack_from("<III", note, pos)
        name_end = pos + 12 + ((namesz + 3) & ~3)
        if kind == NOTE_GNU_BUILD_ID and note[pos + 12:pos + 12 + namesz].rstrip(b"\0") == b"GNU":
            return note[name_end:name_end + descsz].hex()
        pos = name_end + ((descsz + 3) & ~3)
    return None


def file_build_id(path: Path) -> str | None:
    """Build id of a module file, ``.ko`` or ``.ko.xz`` (bounded: modules are a few MB)."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".xz":
            raw = lzma.LZMADecompressor().decompress(raw, max_length=256 << 20)
    except (OSError, lzma.LZMAError):
        return None
    return elf_build_id(raw)


def loaded_build_id(module: str, sys_module: Path = Path("/sys/module")) -> str | None:
    try:
        return note_build_id((sys_module / module / "notes" / ".note.gnu.build-id").read_bytes())
    except OSError:
        return None


def module_params(module: str, sys_module: Path = Path("/sys/module")) -> dict[str, str]:
    params: dict[str, str] = {}
    directory = sys_module / module / "parameters"
    for p in sorted(directory.iterdir()) if directory.is_dir() else ():
        try:
            params[p.name] = p.read_text().strip()
        except OSError:
            continue
    return params


def loaded(sys_module: Path = Path("/sys/module")) -> Loaded | None:
    """The KVM modules loaded now, or None when KVM is not loaded as modules."""
    vendor = next((v for v in VENDORS if (sys_module / v / "initstate").is_file()), None)
    if vendor is None or not (sys_module / "kvm" / "initstate").is_file():
        return None
    ids = {m: loaded_build_id(m, sys_module) or "" for m in ("kvm", vendor)}
    return Loaded(vendor, ids, {m: module_params(m, sys_module) for m in ("kvm", vendor)})


def users(module: str, sys_module: Path = Path("/sys/module")) -> int:
    """References held on a module (open ``/dev/kvm`` files hold the vendor module)."""
    try:
        return int((sys_module / module / "refcnt").read_text())
    except (OSError, ValueError):
        return 0


def stock_files(state: Loaded, release: str, modules_root: Path = Path("/lib/modules")) -> ModuleFiles:
    """The files under ``/lib/modules/<release>`` whose build ids are the loaded ones: the modules to
    put back. Without them a swap could never be undone, so it is refused."""
    found: dict[str, str] = {}
    base = modules_root / release
    candidates = sorted(p for p in base.rglob("kvm*.ko*") if p.is_file() and not p.is_symlink())
    for module, build_id in state.build_ids.items():
        match = next((c for c in candidates if build_id and file_build_id(c) == build_id), None)
        if match is None:
            raise SwapError(
                f"cannot find the file of the loaded {module} (build id {build_id or 'unknown'}) under {base}: "
                "without it the stock KVM could not be put back, so nothing was swapped"
            )
        found[module] = str(match)
    return ModuleFiles("stock", found)


def build_files(directory: Path, vendor: str) -> ModuleFiles:
    """``kvm.ko`` and the vendor's ``.ko`` of a ``kvmmm-ab`` build directory."""
    files = {"kvm": directory / "kvm.ko", vendor: directory / (vendor.replace("_", "-") + ".ko")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise SwapError(f"{directory} is not a KVM build for this host: {', '.join(missing)} missing")
    return ModuleFiles(str(directory), {m: str(p) for m, p in files.items()})


def _kmod(args: list[str]) -> None:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, errors="replace", timeout=120)
    except FileNotFoundError:
        raise SwapError(f"{args[0]} not found: apt-get install kmod") from None
    except subprocess.TimeoutExpired:
        raise SwapError(f"{' '.join(args)} hung for 120 s") from None
    if proc.returncode != 0:
        raise SwapError(f"{' '.join(args)} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")


def param_args(params: Mapping[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in params.items()]


class ModuleSwap:
    """This process's swaps of the KVM modules, journalled in ``journal_dir``.

    Use as a context manager: leaving it (normally, by an exception, or Ctrl-C) puts the stock
    modules back. ``switch`` loads a build; ``restore`` the stock one.
    """

    def __init__(self, journal_dir: Path, release: str, sys_module: Path = Path("/sys/module"),
                 modules_root: Path = Path("/lib/modules")) -> None:  # fmt: skip
        self.dir = journal_dir
        self.journal = journal_dir / f"kvm-modules.{os.getpid()}.json"
        self.sys_module = sys_module
        state = loaded(sys_module)
        if state is None:
            raise SwapError("KVM is not loaded as modules here (built in, or not loaded): swap builds on a host with kvm.ko, or compare two kernels in the lab")
        self.original = state
        self.stock = stock_files(state, release, modules_root)
        self.current = "stock"

    def __enter__(self) -> ModuleSwap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def _write_journal(self) -> None:
        secure_dir(self.dir)
        data = {"pid": os.getpid(), "original": asdict(self.original), "stock": asdict(self.stock)}
        tmp = self.dir / f".{self.journal.name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.journal)

    def _unload(self) -> None:
        vendor = self.original.vendor
        if users(vendor, self.sys_module):
            raise SwapError(f"{vendor} is in use ({users(vendor, self.sys_module)} references: a VM or an open /dev/kvm); swap between runs only")
        for module in (vendor, "kvm"):
            if (self.sys_module / module / "initstate").is_file():
                _kmod(["rmmod", module])

    def _load(self, files: ModuleFiles, params: Mapping[str, Mapping[str, str]]) -> None:
        for module in ("kvm", self.original.vendor):
            _kmod(["insmod", files.files[module], *param_args(params.get(module, {}))])

    def switch(self, files: ModuleFiles, params: Mapping[str, Mapping[str, str]] | None = None) -> None:
        """Load ``files`` in place of what is loaded; on any failure the stock modules go back."""
        if not self.journal.exists():
            self._write_journal()
        try:
            self._unload()
            self._load(files, params or {})
            self.current = files.label
        except BaseException:
            self.restore()
            raise

    def restore(self) -> list[str]:
        """Put the stock modules back, with their original parameters; returns what was done."""
        done = restore_state(self.original, self.stock, self.sys_module)
        self.current = "stock"
        self.journal.unlink(missing_ok=True)
        return done


def restore_state(original: Loaded, stock: ModuleFiles, sys_module: Path = Path("/sys/module")) -> list[str]:
    """Make the loaded KVM the stock one again (a no-op when it already is)."""
    now = loaded(sys_module)
    if now is not None and dict(now.build_ids) == dict(original.build_ids):
        return []
    for module in (original.vendor, *VENDORS, "kvm"):
        if (sys_module / module / "initstate").is_file():
            _kmod(["rmmod", module])
    for module in ("kvm", original.vendor):
        if file_build_id(Path(stock.files[module])) != original.build_ids.get(module):
            raise SwapError(f"{stock.files[module]} is no longer the stock {module}: load it by hand (modprobe {module})")
        changed = {k: v for k, v in original.params.get(module, {}).items() if _settable(module, k)}
        _kmod(["insmod", stock.files[module], *param_args(changed)])
    return [f"restored the stock KVM modules ({', '.join(stock.files.values())})"]


#: Parameters that are read back exactly as they are written (others, such as ``nx_huge_pages``
#: that reads ``N`` for ``auto``, are left to their default on a restore).
_RESTORABLE = {"kvm": {"tdp_mmu", "eager_page_split", "enable_pmu", "halt_poll_ns", "mmio_caching"},
               "kvm_amd": {"npt", "nested", "avic", "vls", "vgif"}, "kvm_intel": {"ept", "nested", "unrestricted_guest"}}  # fmt: skip


def _settable(module: str, param: str) -> bool:
    return param in _RESTORABLE.get(module, set())


def secure_dir(path: Path) -> None:
    """The journal directory, private to us (``coordination.safefs.private_dir``), or a ``SwapError``."""
    try:
        private_dir(path)
    except OSError as exc:
        raise SwapError(f"cannot use the journal directory {path}: {exc.strerror or exc}") from None


def stale_journals(journal_dir: Path, alive: Iterable[int] = ()) -> list[tuple[Path, Loaded, ModuleFiles]]:
    """Journals of swaps whose process is gone: the host may still run a swapped KVM."""
    try:
        secure_dir(journal_dir)
    except SwapError:
        return []
    found = []
    for path in sorted(journal_dir.glob("kvm-modules.*.json")):
        try:
            st = os.lstat(path)
            if st.st_uid != os.geteuid() or st.st_mode & 0o022 or not path.is_file() or path.is_symlink():
                continue
            data = json.loads(path.read_text())
            pid = int(data["pid"])
            if pid in alive or pid_alive(pid):
                continue
            orig = data["original"]
            state = Loaded(str(orig["vendor"]), {str(k): str(v) for k, v in orig["build_ids"].items()},
                           {str(m): {str(k): str(v) for k, v in p.items()} for m, p in orig.get("params", {}).items()})  # fmt: skip
            stock = ModuleFiles("stock", {str(k): str(v) for k, v in data["stock"]["files"].items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if state.vendor in VENDORS and set(stock.files) == {"kvm", state.vendor}:
            found.append((path, state, stock))
    return found


def restore_stale(journal_dir: Path, sys_module: Path = Path("/sys/module")) -> list[str]:
    """Put the stock KVM back after a ``kvmmm-ab`` that died mid-swap."""
    done = []
    for path, state, stock in stale_journals(journal_dir):
        done += restore_state(state, stock, sys_module) or [f"stock KVM already loaded ({path.name})"]
        path.unlink(missing_ok=True)
    return done
