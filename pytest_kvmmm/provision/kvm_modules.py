"""Building KVM modules (``kvm.ko``, ``kvm-amd.ko``, ``kvm-intel.ko``) for a running x86 kernel.

On x86, KVM is modules, so a patched KVM can be measured against the stock one on the same
boot (``kvmmm-ab``): build the patched modules, swap them in while no VM is alive, swap the
stock ones back. A module loads only into the kernel it was built for: the same release string
(``vermagic``), the same symbol versions (the target's ``Module.symvers``) and the same
configuration. So a build has two inputs:

* the **source**: a kernel tree or a ``linux-source`` tarball of the target's version, plus
  patches (``patch -p1``);
* the **target**: a kbuild directory of the kernel that will load the modules, holding its
  ``.config`` and ``Module.symvers``: ``/lib/modules/<release>/build`` on that host, or
  Debian's ``linux-headers-<release>`` package unpacked (how the lab builds for a guest).

Steps, each cached under ``<cache root>/kvm-modules/``:

1. ``trees/<key>``: the source unpacked (a tarball) or copied, configured with the target's
   ``.config`` (``olddefconfig``) and ``modules_prepare``d for its release. Keyed by source
   identity and target, so every variant built for one kernel shares it (about 2 minutes).
   KVM is built there once, unpatched, so its objects are ready for every variant.
2. ``builds/<key>``: one variant: a hard-link copy of the prepared tree (``cp -al``: patch
   replaces files, so the prepared tree stays clean) with real copies of the KVM directories
   (the compiler rewrites objects in place), the patches applied, ``make M=arch/x86/kvm``
   (recompiling only what the patches touched), the modules stripped of debug info and kept with
   a ``manifest.json``; the work tree is deleted. Keyed by the tree and the patches' contents.

Subprocesses are argument lists, never a shell.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from .source import ProvisionError, apt_install, locate_source, run, tar_error, tree_version

#: The KVM modules of x86, as files (``kvm-amd.ko``) and as loaded modules (``kvm_amd``).
MODULE_FILES = ("kvm.ko", "kvm-amd.ko", "kvm-intel.ko")
MANIFEST = "manifest.json"
#: What a KVM build compiles and writes objects into (``make M=arch/x86/kvm`` builds both).
KVM_DIRS = ("arch/x86/kvm", "virt/kvm")
_DONE = ".kvmmm-prepared"


@dataclass(frozen=True)
class Target:
    """The kernel the modules are for: its release and its kbuild directory."""

    release: str
    kbuild: Path

    @property
    def identity(self) -> str:
        """Release plus the hashes of ``.config`` and ``Module.symvers``: what a module must match."""
        h = hashlib.sha256(self.release.encode())
        for name in (".config", "Module.symvers"):
            h.update((self.kbuild / name).read_bytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class ModuleBuild:
    """A finished build: a directory with the ``.ko`` files and its manifest."""

    path: Path
    release: str
    source: str
    patches: Sequence[dict[str, str]] = field(default_factory=tuple)
    build_s: float = 0.0
    cached: bool = False

    @property
    def label(self) -> str:
        """``6.12.117 + slow-fault.patch (3f2a9c1e)``, or ``6.12.117 (no patches)``."""
        if not self.patches:
            return f"{self.source} (no patches)"
        return self.source + "".join(f" + {p['name']} ({p['sha256'][:8]})" for p in self.patches)


def target_from_kbuild(kbuild: Path) -> Target:
    """A target from a kbuild directory; its release from ``include/config/kernel.release`` or,
    in Debian's headers packages, ``.kernelvariables``."""
    for need in (".config", "Module.symvers"):
        if not (kbuild / need).is_file():
            raise ProvisionError(
                f"{kbuild} has no {need}: give the kbuild directory of the kernel the modules are for "
                "(/lib/modules/RELEASE/build, from its linux-headers package)"
            )
    release_file = kbuild / "include/config/kernel.release"
    release = release_file.read_text().strip() if release_file.is_file() else ""
    variables = kbuild / ".kernelvariables"
    if not release and variables.is_file():
        for line in variables.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.split()[-1:] == ["KERNELRELEASE"]:
                release = value.strip()
    if not release:
        raise ProvisionError(f"{kbuild} does not say its kernel release (include/config/kernel.release)")
    return Target(release, kbuild.resolve())


def debian_headers(release: str, cache_root: Path, progress: TextIO | None = None) -> Target:
    """Debian's ``linux-headers-<release>`` (with its ``-common`` and ``linux-kbuild`` packages),
    downloaded with ``apt-get download`` and unpacked into the cache, as a target."""
    dest = cache_root / "kvm-modules" / "headers" / release
    kbuild = dest / "usr/src" / f"linux-headers-{release}"
    if (dest / _DONE).is_file():
        return target_from_kbuild(kbuild)
    flavourless = release.rsplit("-", 1)[0]  # 6.12.117+deb12-amd64 -> 6.12.117+deb12
    packages = [f"linux-headers-{release}", f"linux-headers-{flavourless}-common", f"linux-kbuild-{flavourless}"]
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _say(progress, f"downloading {', '.join(packages)}")
    proc = run(["apt-get", "download", *packages], cwd=partial, capture_output=True)
    if proc.returncode != 0:
        raise ProvisionError(f"apt-get download {packages[0]} failed: {_last_line(proc.stderr)}")
    for deb in sorted(partial.glob("*.deb")):
        proc = run(["dpkg-deb", "-x", str(deb), str(partial)], capture_output=True)
        if proc.returncode != 0:
            raise ProvisionError(f"dpkg-deb -x {deb.name} failed: {_last_line(proc.stderr)}")
        deb.unlink()
    (partial / _DONE).write_text(release + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(partial, dest)
    return target_from_kbuild(kbuild)


def _say(progress: TextIO | None, text: str) -> None:
    if progress is not None:
        print(f"kvmmm-ab: {text}", file=progress, flush=True)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _logged(args: list[str], log: Path, cwd: Path | None = None) -> None:
    """Run a build step, its output appended to ``log``; a failure names the step and the log."""
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(args)}\n")
        fh.flush()
        try:
            proc = subprocess.run(args, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
        except FileNotFoundError:
            raise ProvisionError(f"{args[0]} not found: apt-get install build-essential flex bison bc libelf-dev libssl-dev") from None
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise ProvisionError(f"{' '.join(args[:4])} failed (exit {proc.returncode}; log {log}): " + " | ".join(tail))


def localversion(tree_ver: str, release: str) -> str:
    """The ``LOCALVERSION`` that makes a tree of version ``tree_ver`` build modules for
    ``release`` (``6.12.117`` + ``+deb12-amd64``); a release of another version is refused."""
    if release == tree_ver or release.startswith(tree_ver) and not release[len(tree_ver)].isdigit():
        return release[len(tree_ver):]
    raise ProvisionError(
        f"the source is Linux {tree_ver}, the target kernel is {release}: modules load only into "
        f"the kernel version they were built from (use the source of {release})"
    )


def needed_packages(config: Mapping[str, str], which: Callable[[str], str | None] = shutil.which) -> list[str]:
    """Debian packages of the tools configuring and building KVM for ``config`` needs and PATH lacks."""
    tools = {"make": "make", "gcc": "gcc", "flex": "flex", "bison": "bison", "bc": "bc", "patch": "patch", "strip": "binutils"}
    if config.get("CONFIG_DEBUG_INFO_BTF") == "y":
        tools["pahole"] = "dwarves"
    return sorted({pkg for tool, pkg in tools.items() if which(tool) is None})


def ensure_tools(target: Target, progress: TextIO | None) -> None:
    """Install what is missing with apt as root (like kvmmm-build); otherwise say what to install."""
    missing = needed_packages(read_config((target.kbuild / ".config").read_text()))
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ProvisionError(f"building KVM modules needs {', '.join(missing)}: apt-get install {' '.join(missing)}")
    _say(progress, f"apt-get install {' '.join(missing)}")
    apt_install(" ".join(missing))


def prepared_tree(source_arg: Path, target: Target, cache_root: Path, progress: TextIO | None = None) -> Path:
    """The source unpacked, configured for ``target`` and ``modules_prepare``d (cached)."""
    source = locate_source(source_arg, cache_root)
    ensure_tools(target, progress)
    key = hashlib.sha256(f"{source.identity}\0{target.identity}".encode()).hexdigest()[:16]
    tree = cache_root / "kvm-modules" / "trees" / key
    if (tree / _DONE).is_file():
        return tree
    partial = tree.with_name(tree.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    log = partial.with_suffix(".log")
    log.write_text("")
    if source.top is None:
        _say(progress, f"copying {source.path}")
        _logged(["cp", "-a", "--reflink=auto", f"{source.path}/.", str(partial)], log)
        _logged(["make", "-C", str(partial), "mrproper"], log)
    else:
        _say(progress, f"unpacking {source.path} (about a minute)")
        env = {**os.environ, "XZ_OPT": "-T0"}
        proc = run(["tar", "-xf", str(source.path), "-C", str(partial), "--strip-components=1", "--no-same-owner",
                    f"--exclude={source.top}/Documentation/*/*"], capture_output=True, env=env)  # fmt: skip
        if proc.returncode != 0:
            raise ProvisionError(f"unpacking {source.path} failed: {tar_error(proc.stderr)}")
    version = tree_version(partial)
    local = localversion(version, target.release)
    shutil.copyfile(target.kbuild / ".config", partial / ".config")
    _say(progress, f"configuring for {target.release} (olddefconfig, modules_prepare)")
    jobs = f"-j{os.cpu_count() or 1}"
    _logged(["make", "-C", str(partial), "-s", f"LOCALVERSION={local}", "olddefconfig"], log)
    drift = config_drift((target.kbuild / ".config").read_text(), (partial / ".config").read_text())
    if drift:
        raise drift_error(drift, target.release)
    _logged(["make", "-C", str(partial), "-s", jobs, f"LOCALVERSION={local}", "modules_prepare"], log)
    shutil.copyfile(target.kbuild / "Module.symvers", partial / "Module.symvers")
    # KVM built once, unpatched: a variant recompiles only what its patches touch.
    _say(progress, "building the unpatched KVM modules once (a few minutes; variants reuse the objects)")
    _logged(["make", "-C", str(partial), "-s", jobs, f"LOCALVERSION={local}", "M=arch/x86/kvm", "modules"], log)
    built_release = (partial / "include/config/kernel.release").read_text().strip()
    if built_release != target.release:
        raise ProvisionError(f"the prepared tree says {built_release}, not {target.release}")
    (partial / _DONE).write_text(json.dumps({"source": str(source.path), "version": version, "local": local}) + "\n")
    shutil.rmtree(tree, ignore_errors=True)
    os.replace(partial, tree)
    return tree


#: Options that only describe the build machine's toolchain: they may differ without changing the kernel.
_TOOLCHAIN_INFO = ("CONFIG_CC_VERSION_TEXT", "CONFIG_GCC_VERSION", "CONFIG_CLANG_VERSION", "CONFIG_AS_VERSION",
                   "CONFIG_LD_VERSION", "CONFIG_RUSTC_", "CONFIG_PAHOLE_", "CONFIG_CC_HAS_", "CONFIG_AS_HAS_", "CONFIG_LD_HAS_",
                   "CONFIG_TOOLS_SUPPORT_", "CONFIG_BINDGEN_VERSION")  # fmt: skip
#: Options the kernel's config drops when the build machine lacks a tool, and the package with it.
_TOOL_FOR = {"CONFIG_DEBUG_INFO_BTF": "dwarves (pahole)", "CONFIG_DEBUG_INFO_BTF_MODULES": "dwarves (pahole)"}


def read_config(text: str) -> dict[str, str]:
    """``CONFIG_X=value`` lines of a kernel ``.config`` (``# CONFIG_X is not set`` is absence)."""
    out = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq and key.startswith("CONFIG_"):
            out[key] = value
    return out


def config_drift(target: str, built: str) -> list[str]:
    """Options ``olddefconfig`` changed from the target's ``.config``, toolchain descriptions aside.

    Any such change can move fields of ``struct module`` or other shared structures (a kernel with
    ``CONFIG_DEBUG_INFO_BTF_MODULES`` has four more), and the modules then fail to load with
    "Invalid relocation target" or, worse, load and misbehave.
    """
    a, b = read_config(target), read_config(built)
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith(_TOOLCHAIN_INFO))
    return [f"{k}: {a.get(k, 'unset')} -> {b.get(k, 'unset')}" for k in keys]


def drift_error(drift: Sequence[str], release: str) -> ProvisionError:
    keys = [d.split(":", 1)[0] for d in drift]
    tools = sorted({_TOOL_FOR[k] for k in keys if k in _TOOL_FOR})
    hint = f"install {', '.join(tools)} and build again" if tools else "build on a machine with the target's toolchain"
    return ProvisionError(
        f"this machine cannot configure a kernel exactly like {release}: olddefconfig changed "
        f"{'; '.join(drift[:4])}{' ...' if len(drift) > 4 else ''}; modules built so would not load ({hint})"
    )


def patch_info(patches: Sequence[Path]) -> list[dict[str, str]]:
    """Name, sha256 and subject (``Subject:`` of a ``git format-patch`` file) of each patch."""
    info = []
    for p in patches:
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise ProvisionError(f"cannot read patch {p}: {exc.strerror}") from None
        subject = next((ln[9:].strip() for ln in data.decode(errors="replace").splitlines() if ln.startswith("Subject: ")), "")
        info.append({"name": p.name, "path": str(p.resolve()), "sha256": hashlib.sha256(data).hexdigest(), "subject": subject})
    return info


def read_build(path: Path) -> ModuleBuild | None:
    """A finished build directory (its manifest), or None."""
    try:
        data = json.loads((path / MANIFEST).read_text())
        return ModuleBuild(path, str(data["release"]), str(data["source"]), tuple(data.get("patches") or ()),
                           float(data.get("build_s") or 0.0), cached=True)  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_modules(
    source_arg: Path,
    target: Target,
    patches: Sequence[Path] = (),
    cache_root: Path | None = None,
    progress: TextIO | None = None,
) -> ModuleBuild:
    """KVM modules from ``source_arg`` plus ``patches`` for ``target`` (cached by both)."""
    from .cache import default_cache_root

    cache_root = cache_root or default_cache_root()
    started = time.monotonic()
    tree = prepared_tree(source_arg, target, cache_root, progress)
    info = patch_info(patches)
    key = hashlib.sha256("\0".join([tree.name, *(p["sha256"] for p in info)]).encode()).hexdigest()[:16]
    out = cache_root / "kvm-modules" / "builds" / key
    done = read_build(out)
    if done is not None:
        return done
    work = out.with_name(out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    log = out.with_name(out.name + ".log")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
    except OSError as exc:
        raise ProvisionError(f"cannot write to the cache {out.parent}: {exc.strerror}") from None
    _say(progress, f"building KVM modules for {target.release}" + (f" with {len(info)} patch(es)" if info else ""))
    try:
        _logged(["cp", "-al", str(tree), str(work)], log)
        for kvm_dir in KVM_DIRS:  # real copies: the compiler rewrites objects in place, a hard link would too
            shutil.rmtree(work / kvm_dir)
            _logged(["cp", "-a", str(tree / kvm_dir), str(work / kvm_dir)], log)
        for p in info:
            _logged(["patch", "-p1", "--forward", "--batch", "-d", str(work), "-i", p["path"]], log)
        meta = json.loads((tree / _DONE).read_text())
        _logged(["make", "-C", str(work), "-s", f"-j{os.cpu_count() or 1}", f"LOCALVERSION={meta['local']}",
                 "M=arch/x86/kvm", "modules"], log)  # fmt: skip
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for name in MODULE_FILES:
            built = work / "arch/x86/kvm" / name
            if built.is_file():
                _logged(["strip", "--strip-debug", "-o", str(partial / name), str(built)], log)
        if not (partial / "kvm.ko").is_file():
            raise ProvisionError(f"the build made no kvm.ko (log {log}): is CONFIG_KVM=m in the target's .config?")
        build = ModuleBuild(partial, target.release, f"Linux {meta['version']}", tuple(info), round(time.monotonic() - started, 1))
        manifest = {k: v for k, v in asdict(build).items() if k not in ("path", "cached")}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(partial, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ModuleBuild(out, build.release, build.source, build.patches, build.build_s)
