"""What a lab host image is made of: pure data and pure decisions, no I/O.

An image is a kernel (Debian's, or one built to order), a userspace of Debian packages of the
host's architecture (python3 and busybox, unpacked, no maintainer scripts), the plugin's
pure-Python dependencies as wheels pinned to the versions the controlling pytest uses, the
kernel modules of the host kind (virtio-net for the xdist gateway, 9p for the shared results
directory, KVM where it is a module), and the KVM selftests built by ``kvmmm-build`` for that
architecture.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

#: Bumped when the image layout changes, so old caches are rebuilt rather than misused.
RECIPE_FORMAT = 1
SUITE = "bookworm"

#: The guest userspace (dependencies are resolved by mmdebstrap). busybox gives the shell,
#: mount, ip, insmod; python3-minimal + libpython3.11-stdlib give ctypes, json, subprocess.
GUEST_PACKAGES = ("busybox-static", "python3-minimal", "libpython3.11-stdlib")
#: Unpacked but useless in the guest: removed to keep the initramfs small.
PRUNE = (
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
    "usr/share/bug", "var/cache/apt", "var/lib/apt/lists", "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/idlelib", "usr/lib/python3.11/lib2to3", "usr/lib/python3.11/pydoc_data",
)  # fmt: skip
GUEST_SITE = "usr/local/lib/python3.11/dist-packages"


def parse_depends_field(text: str) -> list[str]:
    """``Depends:`` of ``apt-cache show`` -> package names, alternatives and versions dropped."""
    names = []
    for clause in text.split(","):
        first = clause.split("|")[0].strip()
        m = re.match(r"([a-z0-9][a-z0-9+.-]*)", first)
        if m:
            names.append(m.group(1))
    return names


def kernel_package(meta_show: str) -> tuple[str, str]:
    """``(package, version)`` of the image package a meta package depends on, from ``apt-cache
    show --no-all-versions <meta>:arm64``: ``linux-image-6.12.117+deb12-arm64``."""
    version = re.search(r"^Version: (\S+)$", meta_show, re.MULTILINE)
    depends = re.search(r"^Depends: (.+)$", meta_show, re.MULTILINE)
    if not version or not depends:
        raise ValueError("no Version/Depends in the meta package's record")
    images = [p for p in parse_depends_field(depends.group(1)) if p.startswith("linux-image-")]
    if not images:
        raise ValueError(f"the meta package depends on no linux-image package: {depends.group(1)}")
    return images[0], version.group(1)


def parse_show_versions(text: str) -> dict[str, str]:
    """``Package:``/``Version:`` pairs of ``apt-cache show`` records."""
    out = {}
    for record in text.split("\n\n"):
        name = re.search(r"^Package: (\S+)$", record, re.MULTILINE)
        version = re.search(r"^Version: (\S+)$", record, re.MULTILINE)
        if name and version:
            out[name.group(1)] = version.group(1)
    return out


def module_name(filename: str) -> str:
    """``9pnet_virtio.ko.xz`` -> ``9pnet_virtio``; ``-`` and ``_`` are the same to the kernel."""
    return re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", filename).replace("-", "_")


def modinfo_depends(module: bytes) -> list[str]:
    """The ``depends=`` list of an (uncompressed) module's ``.modinfo`` section."""
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", module)
    if not m or not m.group(1):
        return []
    return [d.decode().replace("-", "_") for d in m.group(1).split(b",") if d]


def module_closure(wanted: Iterable[str], depends: Callable[[str], Sequence[str]]) -> list[str]:
    """``wanted`` and everything they depend on, dependencies first (the order insmod needs)."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise ValueError(f"module dependency cycle at {name}")
        visiting.add(name)
        for dep in depends(name):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


def guest_marker_env(machine: str, python: str = "3.11") -> dict[str, str]:
    """PEP 508 marker values of the guest: Debian bookworm's python3 on Linux/``machine``."""
    return {
        "python_version": python, "python_full_version": f"{python}.2", "os_name": "posix",
        "sys_platform": "linux", "platform_system": "Linux", "platform_machine": machine,
        "platform_python_implementation": "CPython", "implementation_name": "cpython",
        "extra": "",
    }  # fmt: skip


def wheel_pins(
    root: str,
    requires: Callable[[str], Sequence[str]],
    version: Callable[[str], str | None],
    env: Mapping[str, str],
) -> dict[str, str]:
    """``name -> version`` for ``root``'s runtime dependencies, recursively, at the versions
    installed here: the guest's pytest, xdist and execnet must be the controller's.

    ``requires(name)`` gives a distribution's ``Requires-Dist`` strings, ``version(name)`` its
    installed version (None: not installed, an error since the pin would be a guess).
    """
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    todo = [root]
    seen = {canonicalize_name(root)}
    while todo:
        for spec in requires(todo.pop()):
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(dict(env)):
                continue
            name = canonicalize_name(req.name)
            if name in seen:
                continue
            seen.add(name)
            installed = version(req.name)
            if installed is None:
                raise LookupError(f"{req.name} is not installed here; install the plugin first (ci/setup.sh)")
            pins[name] = installed
            todo.append(req.name)
    return dict(sorted(pins.items()))


def cache_key(parts: Mapping[str, object]) -> str:
    """A short stable hash of everything a cached image part was made from."""
    text = json.dumps({"format": RECIPE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pruned(rel: str) -> bool:
    """Whether an unpacked path (relative to the rootfs) is dropped from the image."""
    return any(rel == p or rel.startswith(p + "/") for p in PRUNE)
