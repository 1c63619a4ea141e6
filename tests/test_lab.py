"""The lab (``pytest_kvmmm/lab``, ``kvmmm-lab``; the CI stage ``ci/lab/lab.py``): pure logic
only, fast and without QEMU.

cpio archives, the image recipe (kernel package, module closure, wheel pins), host kinds as
data, the guest's per-boot overlay, QEMU's command line, port allocation, shutdown by pid,
the pytest command line, the entry x host table and the CI stage's checks. The real lab is
exercised by ``test_lab_integration.py``.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import types
from pathlib import Path, PurePosixPath

import pytest

from pytest_kvmmm.lab import boot, cli, cpio, debian, hosts, image, overlay, qemu, recipe
from pytest_kvmmm.lab import run as lab_run
from pytest_kvmmm.lab.build import load_image
from pytest_kvmmm.lab.image import LabError

REPO = Path(__file__).resolve().parent.parent


def load_ci_stage() -> types.ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location("kvmmm_lab_ci", REPO / "ci" / "lab" / "lab.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ci = load_ci_stage()


class TestCpio:
    def test_header_layout(self) -> None:
        head = cpio.header("etc/x", 0o100644, 5, 7, 3)
        assert head.startswith(b"070701" + b"%08X" % 3 + b"%08X" % 0o100644)
        assert len(head) % 4 == 0 and head[110:116] == b"etc/x\0"
        assert int(head[54:62], 16) == 5 and int(head[94:102], 16) == len("etc/x") + 1

    def test_parents_first_and_names_round_trip(self, tmp_path: Path) -> None:
        out = tmp_path / "a.cpio"
        with out.open("wb") as fh, cpio.CpioWriter(fh) as w:
            w.add_file("/usr/lib/python3/x.py", b"print(1)\n")
            w.add_symlink("/bin/sh", "busybox")
            w.add_dir("/usr/lib")  # already there: not repeated
        data = out.read_bytes()
        assert len(data) % 512 == 0
        assert cpio.read_names(data) == ["usr", "usr/lib", "usr/lib/python3", "usr/lib/python3/x.py", "bin", "bin/sh"]

    def test_concatenated_archives(self, tmp_path: Path) -> None:
        parts = []
        for i, name in enumerate(("a", "b")):
            path = tmp_path / f"{name}.cpio"
            with path.open("wb") as fh, cpio.CpioWriter(fh, ino_base=1000 * (i + 1)) as w:
                w.add_file(f"/{name}", name.encode())
            parts.append(path)
        qemu.concat(parts, tmp_path / "initrd")
        assert cpio.read_names((tmp_path / "initrd").read_bytes()) == ["a", "b"]

    @pytest.mark.parametrize("bad", ["", "/", "../etc/passwd", "a/../../b"])
    def test_paths_stay_inside(self, bad: str) -> None:
        with pytest.raises(ValueError):
            cpio.archive_path(bad)

    def test_tree_keeps_modes_mtimes_and_links(self, tmp_path: Path) -> None:
        root = tmp_path / "root"
        (root / "usr/bin").mkdir(parents=True)
        (root / "usr/share/doc").mkdir(parents=True)
        (root / "usr/bin/tool").write_text("#!/bin/sh\n")
        (root / "usr/bin/tool").chmod(0o755)
        os.utime(root / "usr/bin/tool", (1_700_000_000, 1_700_000_000))
        (root / "usr/share/doc/README").write_text("x")
        (root / "lib").symlink_to("usr/lib")
        out = tmp_path / "t.cpio"
        with out.open("wb") as fh, cpio.CpioWriter(fh) as w:
            w.add_tree(root, "/", keep=lambda rel: str(rel) != "usr/share/doc")
        names = cpio.read_names(out.read_bytes())
        assert sorted(names) == ["lib", "usr", "usr/bin", "usr/bin/tool", "usr/share"]
        assert all(names.index(n.rsplit("/", 1)[0]) < names.index(n) for n in names if "/" in n)
        if shutil.which("cpio"):  # the reference reader agrees
            listing = subprocess.run(["cpio", "-tv", "--quiet"], input=out.read_bytes(), capture_output=True, check=True)
            lines = listing.stdout.decode().splitlines()
            tool = next(ln for ln in lines if ln.endswith("usr/bin/tool"))
            assert tool.startswith("-rwxr-xr-x") and " 2023 " in tool
            assert any(ln.startswith("lrwxrwxrwx") and ln.endswith("lib -> usr/lib") for ln in lines)


APT_META = """\
Package: linux-image-6.12-arm64-16k
Source: linux-signed-6.12-arm64 (6.12.117-1~deb12u1)
Version: 6.12.117-1~deb12u1
Architecture: arm64
Depends: linux-image-6.12.117+deb12-arm64-16k (= 6.12.117-1~deb12u1)
Description: Linux for 64-bit ARMv8 machines with 16k pages (meta-package)
"""


class TestRecipe:
    def test_kernel_package_from_the_meta_package(self) -> None:
        assert recipe.kernel_package(APT_META) == ("linux-image-6.12.117+deb12-arm64-16k", "6.12.117-1~deb12u1")
        with pytest.raises(ValueError, match="no linux-image"):
            recipe.kernel_package(APT_META.replace("linux-image-6.12.117", "firmware-6.12.117"))
        with pytest.raises(ValueError, match="no Version"):
            recipe.kernel_package("Package: x\n")

    def test_show_versions(self) -> None:
        text = APT_META + "\nPackage: libc6\nVersion: 2.36-9+deb12u14\nArchitecture: arm64\n"
        assert recipe.parse_show_versions(text) == {"linux-image-6.12-arm64-16k": "6.12.117-1~deb12u1",
                                                    "libc6": "2.36-9+deb12u14"}  # fmt: skip

    def test_depends_field(self) -> None:
        text = "kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, libc6:any"
        assert recipe.parse_depends_field(text) == ["kmod", "initramfs-tools", "libc6"]

    def test_host_kinds(self) -> None:
        kinds = hosts.HOST_KINDS
        assert {k: v.page_kib for k, v in kinds.items()} == {
            "arm64-4k": 4, "arm64-16k": 16, "arm64-cmo": 4, "x86-tdp": 4, "x86-idle": 4}  # fmt: skip
        assert len({k.hostname for k in kinds.values()}) == len(kinds)
        assert all(k.arch in hosts.ARCHES and k.expect.get("emulated") == "tcg" for k in kinds.values())
        assert kinds["arm64-cmo"].cpu == "cortex-a72" and kinds["arm64-cmo"].expect["fwb"] == "no"
        tdp = kinds["x86-tdp"]
        assert tdp.machine == "q35" and tdp.cpu == "EPYC,+svm,+npt,+pdpe1gb" and "kvm_amd" in tdp.modules
        assert tdp.kernel_build is None and kinds["x86-idle"].kernel_build == hosts.KERNEL_BUILDS["x86-idle"]
        assert hosts.parse_hosts("x86-tdp, arm64-cmo,x86-tdp") == ["x86-tdp", "arm64-cmo"]
        assert hosts.parse_hosts("all") == list(kinds)
        with pytest.raises(ValueError, match="unknown lab host kind.*known: arm64-4k"):
            hosts.parse_hosts("x86-ept")

    def test_module_names_and_depends(self) -> None:
        assert recipe.module_name("9pnet_virtio.ko.xz") == "9pnet_virtio"
        assert recipe.module_name("net-failover.ko") == "net_failover"
        blob = b"\x7fELF...\0license=GPL\0depends=net_failover,9pnet\0intree=Y\0"
        assert recipe.modinfo_depends(blob) == ["net_failover", "9pnet"]
        assert recipe.modinfo_depends(b"\0depends=\0") == []
        assert recipe.modinfo_depends(b"no modinfo") == []

    def test_module_closure_puts_dependencies_first(self) -> None:
        deps = {"virtio_net": ["net_failover"], "net_failover": ["failover"], "failover": [],
                "9p": ["9pnet", "netfs"], "9pnet_virtio": ["9pnet"], "9pnet": [], "netfs": []}  # fmt: skip
        order = recipe.module_closure(hosts.NET_9P, deps.__getitem__)
        assert order == ["failover", "net_failover", "virtio_net", "9pnet", "9pnet_virtio", "netfs", "9p"]
        with pytest.raises(ValueError, match="cycle"):
            recipe.module_closure(["a"], {"a": ["b"], "b": ["a"]}.__getitem__)

    def test_wheel_pins_follow_the_installed_versions_and_the_guest_markers(self) -> None:
        requires = {
            "pytest-kvmmm": ["pytest>=7.4", "pytest-xdist>=3.3", "filelock>=3.12",
                             'mypy>=1.5; extra == "test"'],
            "pytest": ["pluggy<2,>=1.5", 'exceptiongroup>=1; python_version < "3.11"',
                       'colorama>=0.4; sys_platform == "win32"'],
            "pytest-xdist": ["execnet>=2.1", "pytest>=7"], "filelock": [], "pluggy": [], "execnet": [],
        }  # fmt: skip
        versions = {"pytest": "9.0.3", "pytest-xdist": "3.8.0", "filelock": "4.2.11", "pluggy": "1.6.0",
                    "execnet": "2.1.2"}  # fmt: skip
        pins = recipe.wheel_pins("pytest-kvmmm", requires.__getitem__, versions.get, recipe.guest_marker_env("aarch64"))
        assert pins == {"execnet": "2.1.2", "filelock": "4.2.11", "pluggy": "1.6.0", "pytest": "9.0.3",
                        "pytest-xdist": "3.8.0"}  # fmt: skip
        with pytest.raises(LookupError, match="execnet is not installed"):
            recipe.wheel_pins("pytest-kvmmm", requires.__getitem__, {**versions, "execnet": None}.get,
                              recipe.guest_marker_env("aarch64"))  # fmt: skip

    def test_cache_key_is_stable_and_sensitive(self) -> None:
        a = recipe.cache_key({"pins": {"pytest": "9.0.3"}, "packages": ["x"]})
        assert a == recipe.cache_key({"packages": ["x"], "pins": {"pytest": "9.0.3"}})
        assert a != recipe.cache_key({"pins": {"pytest": "9.0.4"}, "packages": ["x"]})

    def test_pruned(self) -> None:
        assert recipe.pruned("usr/share/doc") and recipe.pruned("usr/share/doc/python3/README")
        assert not recipe.pruned("usr/share/docs") and not recipe.pruned("usr/lib/python3.11/json")


class TestImageParts:
    def test_install_wheel(self, tmp_path: Path) -> None:
        import zipfile

        wheel = tmp_path / "demo-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("demo/__init__.py", "X = 1\n")
            zf.writestr("demo-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\n")
            zf.writestr("demo-1.0.dist-info/entry_points.txt", "[pytest11]\ndemo = demo\n")
            zf.writestr("demo-1.0.data/purelib/extra.py", "Y = 2\n")
            zf.writestr("demo-1.0.data/scripts/demo", "#!python\n")
        site = tmp_path / "site"
        image.install_wheel(wheel, site)
        assert (site / "demo/__init__.py").read_text() == "X = 1\n"
        assert (site / "extra.py").is_file() and not (site / "demo").joinpath("demo").exists()
        assert (site / "demo-1.0.dist-info/entry_points.txt").is_file()

    def test_platform_wheels_are_refused(self, tmp_path: Path) -> None:
        import zipfile

        wheel = tmp_path / "native-1.0-cp311-cp311-linux_x86_64.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("native-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: false\n")
        with pytest.raises(LabError, match="not a pure-Python wheel"):
            image.install_wheel(wheel, tmp_path / "site")

    def test_decompressed_module_and_modules_dep(self, tmp_path: Path) -> None:
        (tmp_path / "a.ko.xz").write_bytes(lzma.compress(b"\0depends=b\0"))
        assert debian._module_bytes(tmp_path / "a.ko.xz") == b"\0depends=b\0"
        dep = debian.modules_dep(["irqbypass", "kvm", "kvm_amd"], {"kvm": ["irqbypass"], "kvm_amd": ["kvm"]})
        assert dep == "kvmmm/irqbypass.ko:\nkvmmm/kvm.ko: kvmmm/irqbypass.ko\nkvmmm/kvm_amd.ko: kvmmm/kvm.ko\n"

    def test_missing_image_says_how_to_build_it(self, tmp_path: Path) -> None:
        paths = image.LabPaths(tmp_path)
        with pytest.raises(image.LabUnavailable, match="kvmmm-lab build --hosts arm64-4k"):
            load_image(paths, "arm64-4k")
        image.write_json(paths.image_record("arm64-4k"), {"kind": "arm64-4k", "kernel": str(tmp_path / "Image"), "parts": []})
        with pytest.raises(image.LabUnavailable, match="lacks .*Image"):
            load_image(paths, "arm64-4k")

    def test_unavailable_without_root(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(debian, "missing_tools", lambda tools: ["qemu-system-x86_64"])
        s = image.BuildSettings(tmp_path, ["x86-tdp"], 1, allow_apt=True, is_root=False)
        with pytest.raises(image.LabUnavailable, match="apt-get install -y qemu-system-x86"):
            debian.ensure_tools(s, [hosts.ARCHES["x86_64"]])


class TestOverlay:
    def test_config_is_quoted_shell(self) -> None:
        cfg = overlay.GuestConfig("lab-arm64-4k", PurePosixPath("/work/my repo"), None, ("virtio_net", "9p"))
        text = cfg.shell()
        assert "KVMMM_REPO='/work/my repo'\n" in text and "KVMMM_SHARE=''\n" in text
        assert "KVMMM_MODULES='virtio_net 9p'\n" in text and "KVMMM_PORT=8888\n" in text
        assert "KVMMM_EMULATED=tcg\n" in text

    def test_overlay_carries_the_installed_plugin_and_the_users_rootdir(self, tmp_path: Path) -> None:
        user = tmp_path / "my project"
        (user / "tests").mkdir(parents=True)
        (user / "pytest.ini").write_text("[pytest]\naddopts = -ra\n")
        (user / "tests/test_mine.py").write_text("def test_x(): pass\n")
        for skipped in (".venv", ".git", "results", "tests/__pycache__"):
            (user / skipped).mkdir(parents=True, exist_ok=True)
            (user / skipped / "x.py").write_text("")
        (user / "link.py").symlink_to("/etc/hostname")
        cfg = overlay.GuestConfig("h", PurePosixPath(user), PurePosixPath(user / "results/lab"), ("9p",))
        dist = {"METADATA": "Metadata-Version: 2.1\nName: pytest-kvmmm\nVersion: 0.1.0\n",
                "entry_points.txt": "[pytest11]\nkvmmm = pytest_kvmmm.plugin\n"}  # fmt: skip
        overlay.write_overlay(tmp_path / "o.cpio", cfg, user, dist)
        names = set(cpio.read_names((tmp_path / "o.cpio").read_bytes()))
        root = str(user).lstrip("/")
        site = recipe.GUEST_SITE
        assert {"init", "etc/kvmmm-lab/server.py", "etc/kvmmm-lab/config",
                f"{site}/pytest_kvmmm-0.1.0.dist-info/entry_points.txt", f"{site}/pytest_kvmmm/plugin.py",
                f"{site}/pytest_kvmmm/lab/guest/init", f"{site}/pytest_kvmmm/suite/test_mm.py",
                f"{root}/pytest.ini", f"{root}/tests/test_mine.py"} <= names  # fmt: skip
        assert not any("__pycache__" in n or "/.venv" in n or "/.git/" in n or n.startswith(f"{root}/results")
                       or n.endswith("link.py") for n in names)  # fmt: skip

    def test_a_rootdir_too_big_is_refused(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(overlay, "MAX_ROOTDIR_FILES", 3)
        for i in range(5):
            (tmp_path / f"t{i}.py").write_text("")
        with pytest.raises(LabError, match="more than 3 files.*--rootdir"):
            overlay.rootdir_files(tmp_path)

    def test_guest_files_are_valid(self) -> None:
        compile((overlay.GUEST_DIR / "server.py").read_text(), "server.py", "exec")
        init = overlay.GUEST_DIR / "init"
        assert init.read_text().startswith("#!/bin/busybox sh\n")
        if shutil.which("sh"):
            subprocess.run(["sh", "-n", str(init)], check=True)


def spec(**kw: object) -> qemu.HostSpec:
    base: dict[str, object] = {"name": "lab-arm64-16k", "kind": hosts.HOST_KINDS["arm64-16k"], "kernel": Path("/k/Image"),
                               "initrd": Path("/r/initrd"), "port": 47011, "console": Path("/r/console.log")}  # fmt: skip
    return qemu.HostSpec(**{**base, **kw})  # type: ignore[arg-type]


class TestQemuArgs:
    def test_the_command_line(self) -> None:
        args = qemu.qemu_args(spec(smp=2, mem="3G"))
        assert args[0] == "qemu-system-aarch64"
        joined = " ".join(args)
        for piece in ("-machine virt,virtualization=on,gic-version=3", "-cpu max,lpa2=off", "-accel tcg",
                      "-smp 2", "-m 3G", "-no-reboot", "-kernel /k/Image", "-initrd /r/initrd",
                      "-serial file:/r/console.log", "-display none"):  # fmt: skip
            assert piece in joined
        netdev = args[args.index("-netdev") + 1]
        assert netdev == "user,id=net0,hostfwd=tcp:127.0.0.1:47011-:8888"  # loopback only
        assert args[args.index("-device") + 1] == "virtio-net-pci,netdev=net0,romfile="  # no efi-virtio.rom
        assert "rdinit=/init" in args[args.index("-append") + 1]
        assert "-fsdev" not in args

    def test_the_x86_tdp_host(self) -> None:
        args = qemu.qemu_args(spec(kind=hosts.HOST_KINDS["x86-tdp"]))
        joined = " ".join(args)
        assert args[0] == "qemu-system-x86_64"
        assert "-machine q35 -cpu EPYC,+svm,+npt,+pdpe1gb -accel tcg,thread=single" in joined
        # two vCPUs taking turns on one TCG thread: max_guest_memory_test needs 2 CPUs, and
        # vCPUs in parallel threads ran kernel text being patched (Oops: int3)
        for kind in ("x86-tdp", "x86-idle"):
            assert (hosts.HOST_KINDS[kind].smp, hosts.HOST_KINDS[kind].accel) == (2, "tcg,thread=single")
        assert hosts.HOST_KINDS["arm64-cmo"].accel == "tcg"
        assert args[args.index("-append") + 1].startswith("console=ttyS0 ")
        assert args[args.index("-append") + 1].endswith(" hugepages=96")

    def test_share_is_9p(self) -> None:
        args = qemu.qemu_args(spec(share=Path("/work/main/results/lab")))
        assert "local,id=share0,path=/work/main/results/lab,security_model=none" in args
        assert f"virtio-9p-pci,fsdev=share0,mount_tag={qemu.SHARE_TAG}" in args


class TestPorts:
    def test_stable_ports_from_the_base(self) -> None:
        assert qemu.choose_ports(2, 47010, is_free=lambda p: True) == [47011, 47012]

    def test_a_busy_port_says_what_to_do(self) -> None:
        with pytest.raises(LabError, match=r"127.0.0.1:47012 is in use.*--port-base 0"):
            qemu.choose_ports(2, 47010, is_free=lambda p: p != 47012)

    def test_base_zero_takes_distinct_free_ports(self) -> None:
        handed = iter([5000, 5000, 5001])
        assert qemu.choose_ports(2, 0, ephemeral=lambda: next(handed)) == [5000, 5001]

    def test_out_of_range(self) -> None:
        with pytest.raises(LabError, match="no room"):
            qemu.choose_ports(2, 65535, is_free=lambda p: True)

    def test_real_check(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            taken = s.getsockname()[1]
            assert not qemu.port_is_free(taken)
        assert qemu.port_is_free(qemu.ephemeral_port())

    def test_a_port_in_time_wait_is_free(self) -> None:
        # The CI stage's second batch takes the first batch's ports moments after its QEMUs
        # closed their gateway connections (TIME_WAIT, 60 s): QEMU binds them (SO_REUSEADDR),
        # so the check must too, where a plain bind said "in use" and failed the stage.
        with socket.socket() as srv:
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            port = srv.getsockname()[1]
            client = socket.create_connection(("127.0.0.1", port))
            conn, _ = srv.accept()
            conn.close()  # the listening side closes first, as QEMU does when stopped
        client.close()
        with socket.socket() as plain:
            with pytest.raises(OSError):
                plain.bind(("127.0.0.1", port))  # the TIME_WAIT the test is about is there
        assert qemu.port_is_free(port)


def host_state(name: str, pid: int, argv: list[str] | None = None) -> qemu.HostState:
    return qemu.HostState(name, "arm64-4k", 47011, pid, argv or ["qemu-system-aarch64", name], "/c.log", 0.0)


class FakeProcs:
    """Processes by pid that die on SIGTERM after ``term_delay`` polls, or never (None)."""

    def __init__(self, cmdlines: dict[int, list[str]], term_delay: int | None = 0) -> None:
        self.cmdlines = dict(cmdlines)
        self.term_delay = term_delay
        self.pending: dict[int, int] = {}
        self.signals: list[tuple[int, int]] = []
        self.now = 0.0

    def kill(self, pid: int, sig: int) -> None:
        if pid not in self.cmdlines:
            raise ProcessLookupError(pid)
        self.signals.append((pid, sig))
        if sig == signal.SIGKILL:
            del self.cmdlines[pid]
        elif self.term_delay is not None:
            self.pending[pid] = self.term_delay

    def cmdline(self, pid: int) -> list[str] | None:
        if pid in self.pending:
            if self.pending[pid] == 0:
                del self.pending[pid]
                self.cmdlines.pop(pid, None)
            else:
                self.pending[pid] -= 1
        return self.cmdlines.get(pid)

    def sleep(self, s: float) -> None:
        self.now += s

    def clock(self) -> float:
        return self.now


class TestStop:
    def test_sigterm_by_pid(self) -> None:
        a, b = host_state("a", 101), host_state("b", 102)
        procs = FakeProcs({101: a.argv, 102: b.argv}, term_delay=3)
        out = qemu.stop([a, b], kill=procs.kill, cmdline=procs.cmdline, sleep=procs.sleep, clock=procs.clock)
        assert out == {"a": "stopped (pid 101, SIGTERM)", "b": "stopped (pid 102, SIGTERM)"}
        assert procs.signals == [(101, signal.SIGTERM), (102, signal.SIGTERM)]

    def test_sigkill_after_the_timeout(self) -> None:
        a = host_state("a", 101)
        procs = FakeProcs({101: a.argv}, term_delay=None)
        out = qemu.stop([a], timeout=2, kill=procs.kill, cmdline=procs.cmdline, sleep=procs.sleep, clock=procs.clock)
        assert out == {"a": "killed (pid 101, SIGKILL after 2 s)"}
        assert procs.signals == [(101, signal.SIGTERM), (101, signal.SIGKILL)]

    def test_a_recycled_pid_is_left_alone(self) -> None:
        a = host_state("a", 101)
        procs = FakeProcs({101: ["sshd", "-D"]})
        out = qemu.stop([a], kill=procs.kill, cmdline=procs.cmdline, sleep=procs.sleep, clock=procs.clock)
        assert out == {"a": "not running"} and procs.signals == []

    def test_a_real_process(self, tmp_path: Path) -> None:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            argv = None
            for _ in range(500):  # /proc/<pid>/cmdline is empty for a moment after exec
                argv = qemu.proc_cmdline(proc.pid)
                if argv:
                    break
                time.sleep(0.01)
            state = host_state("sleeper", proc.pid, argv)
            assert qemu.is_ours(state)
            out = qemu.stop([state], timeout=5, cmdline=lambda pid: None if proc.poll() is not None else qemu.proc_cmdline(pid))
            assert out["sleeper"].startswith("stopped")
            assert proc.wait(5) == -signal.SIGTERM
        finally:
            proc.kill()
            proc.wait()

    def test_state_round_trip(self, tmp_path: Path) -> None:
        hosts = [host_state("a", 1), host_state("b", 2)]
        hosts[0].facts = {"hostname": "a"}
        qemu.save_state(tmp_path, hosts)
        assert qemu.load_state(tmp_path) == hosts
        assert qemu.load_state(tmp_path / "nowhere") == []
        assert json.loads((tmp_path / qemu.STATE).read_text())["hosts"][1]["pid"] == 2


SUITE = "pytest_kvmmm/suite/test_mm.py"


def rec(host: str, test: str, case: str, outcome: str, reason: str = "", **facts: str) -> dict[str, object]:
    return {"host": host, "nodeid": f"{SUITE}::{test}[{case}]", "outcome": outcome, "reason": reason,
            "returncode": 0 if outcome != "skipped" else None, "host_facts": facts}  # fmt: skip


class TestWrapper:
    def test_pytest_argv(self) -> None:
        argv = lab_run.pytest_argv(["--tx", "socket=127.0.0.1:47011"], [], Path("/r/lab"), "lab-1", local=True)
        assert argv[1:] == ["-m", "pytest", "-p", "no:cacheprovider", "--dist", "each", "--tx", "popen",
                            "--tx", "socket=127.0.0.1:47011", *lab_run.default_pytest_args(),
                            "--kvm-results=/r/lab/lab-1.jsonl", "--alluredir=/r/lab/allure",
                            "--junitxml=/r/lab/lab-1.junit.xml", "--kvm-kcidb=/r/lab/lab-1.kcidb.json",
                            "--kvm-squad=/r/lab/lab-1.squad"]  # fmt: skip
        assert "popen" not in lab_run.pytest_argv([], [], None, "x", local=False)

    def test_default_selection_is_the_installed_suite_at_the_lab_scale(self) -> None:
        from pytest_kvmmm.suite.scale import SCALES

        args = lab_run.default_pytest_args()
        assert args[:4] == ["--pyargs", "pytest_kvmmm.suite", "--kvm-scale", "lab"] and args[-2:] == ["-k", lab_run.LAB_K]
        assert "arch:aarch64,pxxv48_4k" in args
        assert "lab" in SCALES

    def test_the_users_paths_win(self) -> None:
        argv = lab_run.pytest_argv([], ["-k", "x", "--alluredir=/elsewhere"], Path("/r/lab"), "lab-1", local=True)
        assert "--alluredir=/elsewhere" in argv and "--alluredir=/r/lab/allure" not in argv
        assert "--kvm-results=/r/lab/lab-1.jsonl" in argv
        assert lab_run.pytest_argv([], ["-q"], None, "lab-1", local=True)[-1] == "-q"

    def test_batches_of_at_most_three(self) -> None:
        assert lab_run.batches(["a", "b", "c", "d", "e"], 3) == [["a", "b", "c"], ["d", "e"]]
        assert lab_run.batches(["a"], 0) == [["a"]]

    def test_the_entry_x_host_table(self) -> None:
        from pytest_kvmmm.lab import table

        records = [
            rec("lab-x86-tdp", "test_pre_fault_memory", "", "passed", tdp="yes", emulated="tcg"),
            rec("vm", "test_pre_fault_memory", "", "skipped", "needs KVM_CAP_PRE_FAULT_MEMORY", tdp="no"),
            rec("vm", "test_kvm_page_table", "anonymous-pxxv48_4k", "failed", "exit 1"),
            rec("vm", "test_kvm_page_table", "anonymous-p40v48_4k", "skipped", "not this arch"),
            rec("lab-x86-tdp", "test_kvm_page_table", "anonymous-pxxv48_4k", "passed"),
        ]
        cells = table.entry_table(records)
        assert cells["pre_fault_memory_test"]["vm"] == table.Cell("skipped", "", "needs KVM_CAP_PRE_FAULT_MEMORY")
        assert cells["kvm_page_table_test"]["vm"].outcome == "failed"  # failed outranks skipped
        assert table.entry_of(f"{SUITE}::test_max_guest_memory[x]") == "max_guest_memory_test"
        assert table.entry_of("tests/test_x.py::test_other") is None
        lines = table.render(records)
        assert [c.strip() for c in lines[0].split(" | ")[1:]] == ["lab-x86-tdp", "vm"]
        assert any(ln.startswith("pre_fault_memory_test") and "passed" in ln and "skipped" in ln for ln in lines)
        assert "  pre_fault_memory_test @ vm: : skipped: needs KVM_CAP_PRE_FAULT_MEMORY" in lines
        assert "  lab-x86-tdp: emulated tcg, tdp yes" in lines
        assert lines[-1].startswith("entries that passed on no host: kvm_page_table_test") is False
        assert "access_tracking_perf_test" in lines[-1]
        assert table.expectation_problems(records, {"lab-x86-tdp": {"tdp": "yes", "page_idle": "yes"},
                                                    "lab-gone": {"tdp": "yes"}}) == [  # fmt: skip
            "lab-x86-tdp: fact page_idle is None, expected 'yes'", "lab-gone: no results from this host"]

    def test_ci_must_pass_and_permutation_checks(self) -> None:
        records = [rec("lab-x86-tdp", "test_pre_fault_memory", "", "passed"),
                   rec("lab-x86-tdp", "test_max_guest_memory", "", "failed", "exit 254")]  # fmt: skip
        problems = ci.must_pass_problems(records, ["lab-x86-tdp"])
        assert "max_guest_memory_test must pass on lab-x86-tdp, failed: exit 254" in problems
        assert not any("pre_fault" in p for p in problems)
        assert not any("lab-arm64" in p for p in problems)  # hosts that did not run are not judged
        perms = [rec("lab-x86-tdp", "test_dirty_log_page_splitting", f"eager_page_split={v}", "passed") for v in "YN"]
        perms += [rec("lab-x86-tdp", "test_nx_huge_pages", "nx_huge_pages=Y", "passed")]
        perms += [rec("lab-x86-tdp", "test_kvm_page_table", f"anonymous-pxxv48_4k-tdp_mmu={v}", "passed",
                      tdp_mmu="no" if v == "N" else "yes") for v in "NY"]  # fmt: skip
        assert ci.permutation_checks(perms) == []
        perms[1] = rec("lab-x86-tdp", "test_dirty_log_page_splitting", "eager_page_split=N", "skipped",
                       "needs KVM parameter kvm.eager_page_split=Y, it is N: echo Y > ...")  # set for real: decided
        assert ci.permutation_checks(perms) == []
        perms[1] = rec("lab-x86-tdp", "test_dirty_log_page_splitting", "eager_page_split=N", "skipped",
                       "kvm.eager_page_split is read-only here")
        perms[3]["host_facts"] = {"tdp_mmu": "yes"}
        assert ci.permutation_checks(perms) == [
            "lab-x86-tdp: no case under eager_page_split=N was decided with the value set",
            "lab-x86-tdp: cases under tdp_mmu=N passed, but the host facts never said tdp_mmu no"]

    def test_read_all_results_skips_a_broken_file(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        (tmp_path / "lab-1.jsonl").write_text('{"host": "a", "outcome": "passed"}\n\n')
        (tmp_path / "lab-2.jsonl").write_text('{"host": \n')
        assert lab_run.read_all_results(tmp_path) == [{"host": "a", "outcome": "passed"}]
        assert "unreadable results" in capsys.readouterr().err

    def test_ci_stage_is_skipped_when_no_host_can_be_built(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        def unavailable(args: object) -> int:
            raise image.LabUnavailable("qemu-system-aarch64 missing: run `apt-get install -y qemu-system-arm` as root")

        monkeypatch.setattr(ci.cli, "cmd_build", unavailable)
        monkeypatch.setattr(ci, "run_batches", pytest.fail)
        assert ci.main(["--hosts", "arm64-4k,arm64-cmo"]) == 0
        err = capsys.readouterr().err
        assert "SKIPPED host arm64-cmo: cannot be built here: qemu-system-aarch64 missing" in err
        assert "SKIPPED: no lab host kind can be built here" in err

    def test_ci_stage_is_skipped_when_no_host_can_boot(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        def too_small(args: object, batch: object, lost: object = None) -> None:
            raise image.LabUnavailable("3 lab hosts (3G, 3G, 3G) need 10.0 GiB of free memory")

        monkeypatch.setattr(ci.cli, "cmd_build", lambda args: 0)
        monkeypatch.setattr(ci.boot, "up", too_small)
        assert ci.main(["--results", str(tmp_path)]) == 0
        err = capsys.readouterr().err
        assert "SKIPPED hosts x86-tdp, x86-idle, arm64-cmo: 3 lab hosts" in err
        assert "SKIPPED: no lab host could boot here" in err

    def test_a_machine_too_small_for_the_hosts(self) -> None:
        gib = 1 << 30
        assert boot.memory_shortfall(["3G", "3G"], 24 * gib) is None
        assert boot.memory_shortfall(["3G", "3G"], None) is None  # cannot tell: try
        assert boot.memory_shortfall(["3G", "3G"], 5 * gib) == (
            "2 lab hosts (3G, 3G) need 7.0 GiB of free memory, this machine has 5.0 GiB available "
            "(fewer hosts: --hosts; smaller: --mem 2G)")

    def test_a_failed_download_means_no_lab(self) -> None:
        with pytest.raises(image.LabUnavailable, match="pip download failed"):
            image.checked([sys.executable, "-c", "raise SystemExit('no network')"], "pip download", image.LabUnavailable)
        with pytest.raises(LabError, match="compileall failed.*boom") as info:
            image.checked([sys.executable, "-c", "raise SystemExit('boom')"], "compileall")
        assert not isinstance(info.value, image.LabUnavailable)

    def test_unknown_host_kind(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit):
            cli.parser().parse_args(["up", "--hosts", "x86-ept"])
        assert "unknown lab host kind(s) ['x86-ept']" in capsys.readouterr().err
        assert cli.parser().parse_args(["up", "--hosts", "x86-tdp"]).hosts == ["x86-tdp"]


def test_server_serves_execnet_socket_gateways(tmp_path: Path) -> None:
    """The guest's server, run here: a gateway per connection, each in a fresh process."""
    execnet = pytest.importorskip("execnet")
    port = qemu.ephemeral_port()
    server = subprocess.Popen([sys.executable, str(overlay.GUEST_DIR / "server.py"), str(port)],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == f"kvmmm-lab: ready on port {port}"
        pids = []
        for _ in range(2):
            gw = execnet.makegateway(f"socket=127.0.0.1:{port}")
            try:
                pids.append(gw.remote_exec("import os; channel.send(os.getpid())").receive(10))
            finally:
                gw.exit()
        assert pids[0] != pids[1] and server.pid not in pids
        assert server.poll() is None
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(5)


def test_lab_cli_help_runs_without_the_lab() -> None:
    proc = subprocess.run([sys.executable, "-m", "pytest_kvmmm.lab.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "kvmmm-lab build" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "pytest_kvmmm.lab.cli", "build", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "x86-tdp: x86 AMD SVM+NPT" in " ".join(proc.stdout.split())
    assert stat.S_IMODE((REPO / "ci/lab/lab.py").stat().st_mode) & 0o111


class TestKernelsBuiltToOrder:
    def test_fragment_checks_name_what_kconfig_dropped(self) -> None:
        from pytest_kvmmm.lab import kbuild

        fragment = "# why\nCONFIG_KVM=y\nCONFIG_IDLE_PAGE_TRACKING=y\nCONFIG_DRM=n\n# CONFIG_SOUND is not set\n"
        config = "CONFIG_KVM=y\n# CONFIG_IDLE_PAGE_TRACKING is not set\nCONFIG_SOUND=m\n"
        assert kbuild.parse_config(fragment) == {"CONFIG_KVM": "y", "CONFIG_IDLE_PAGE_TRACKING": "y",
                                                 "CONFIG_DRM": "n", "CONFIG_SOUND": "n"}  # fmt: skip
        assert kbuild.fragment_mismatches(fragment, config) == [
            "CONFIG_IDLE_PAGE_TRACKING=y (got n)", "CONFIG_SOUND=n (got m)"]

    def test_the_shipped_fragment_asks_for_what_access_tracking_needs(self) -> None:
        from pytest_kvmmm.lab import kbuild

        wanted = kbuild.parse_config(kbuild.fragment_text(hosts.KERNEL_BUILDS["x86-idle"]))
        for option in ("CONFIG_IDLE_PAGE_TRACKING", "CONFIG_KVM", "CONFIG_KVM_AMD", "CONFIG_HUGETLBFS",
                       "CONFIG_TRANSPARENT_HUGEPAGE", "CONFIG_9P_FS", "CONFIG_NET_9P_VIRTIO", "CONFIG_VIRTIO_NET"):
            assert wanted[option] == "y", option

    def test_the_cache_key_follows_tree_and_fragment(self, tmp_path: Path) -> None:
        from pytest_kvmmm.lab import kbuild

        build = hosts.KERNEL_BUILDS["x86-idle"]
        key = kbuild.build_key("linux-source:a:1:2", build, "CONFIG_KVM=y\n")
        assert key == kbuild.build_key("linux-source:a:1:2", build, "CONFIG_KVM=y\n")
        assert key != kbuild.build_key("linux-source:a:1:3", build, "CONFIG_KVM=y\n")
        assert key != kbuild.build_key("linux-source:a:1:2", build, "CONFIG_KVM=m\n")
        (tmp_path / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\n")
        assert kbuild.tree_revision(tmp_path) == f"tree:{tmp_path.resolve()}:6.12.117"
        with pytest.raises(LabError, match="not a kernel tree"):
            kbuild.tree_revision(tmp_path / "nowhere")

    def test_git_trees_are_keyed_by_head_and_diff(self, tmp_path: Path) -> None:
        from pytest_kvmmm.lab import kbuild

        if shutil.which("git") is None:
            pytest.skip("no git")
        git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
        subprocess.run([*git, "init", "-q"], check=True)
        (tmp_path / "Makefile").write_text("VERSION = 6\n")
        subprocess.run([*git, "add", "Makefile"], check=True)
        subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
        clean = kbuild.tree_revision(tmp_path)
        assert clean.startswith("git:") and clean.endswith(":clean")
        (tmp_path / "Makefile").write_text("VERSION = 7\n")
        assert kbuild.tree_revision(tmp_path) != clean

    def test_prebuilt_images(self, tmp_path: Path) -> None:
        from pytest_kvmmm.lab import kbuild

        assert kbuild.parse_kernel_images(["x86-idle=/k/bzImage"]) == {"x86-idle": Path("/k/bzImage")}
        with pytest.raises(ValueError, match="expected NAME=PATH"):
            kbuild.parse_kernel_images(["x86-idle"])
        with pytest.raises(LabError, match="no such file"):
            kbuild.prebuilt_kernel(tmp_path / "bzImage", hosts.KERNEL_BUILDS["x86-idle"])
        (tmp_path / "bzImage").write_bytes(b"MZ")
        assert kbuild.prebuilt_kernel(tmp_path / "bzImage", hosts.KERNEL_BUILDS["x86-idle"])["source"] == "prebuilt"


def test_emulated_by_knows_only_tcg() -> None:
    from pytest_kvmmm.host.emulation import emulated_by

    assert emulated_by({"KVMMM_EMULATED": "tcg"}) == "tcg"
    assert emulated_by({"KVMMM_EMULATED": "anything"}) is None and emulated_by({}) is None
