"""The lab tooling (``ci/lab``): pure logic only, fast and without QEMU.

cpio archives, the image recipe (kernel package, module closure, wheel pins), the guest's
per-boot overlay, QEMU's command line, port allocation, shutdown by pid, and the wrapper's
pytest command line and checks. The real lab is exercised by ``test_lab_integration.py``.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "ci" / "lab"))

from kvmmm_lab import cpio, image, overlay, qemu, recipe  # noqa: E402
from kvmmm_lab.image import LabError  # noqa: E402


def load_lab_cli() -> types.ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location("kvmmm_lab_cli", REPO / "ci" / "lab" / "lab.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lab = load_lab_cli()


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

    def test_flavours(self) -> None:
        assert [f.page_kib for f in recipe.FLAVOURS.values()] == [4, 16]
        assert all(f.cpu.startswith("max") for f in recipe.FLAVOURS.values())
        assert len({f.hostname for f in recipe.FLAVOURS.values()}) == len(recipe.FLAVOURS)

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
        order = recipe.module_closure(recipe.GUEST_MODULES, deps.__getitem__)
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
        pins = recipe.wheel_pins("pytest-kvmmm", requires.__getitem__, versions.get, recipe.guest_marker_env())
        assert pins == {"execnet": "2.1.2", "filelock": "4.2.11", "pluggy": "1.6.0", "pytest": "9.0.3",
                        "pytest-xdist": "3.8.0"}  # fmt: skip
        with pytest.raises(LookupError, match="execnet is not installed"):
            recipe.wheel_pins("pytest-kvmmm", requires.__getitem__, {**versions, "execnet": None}.get,
                              recipe.guest_marker_env())  # fmt: skip

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

    def test_decompressed_module(self, tmp_path: Path) -> None:
        (tmp_path / "a.ko.xz").write_bytes(lzma.compress(b"\0depends=b\0"))
        assert image._module_bytes(tmp_path / "a.ko.xz") == b"\0depends=b\0"

    def test_missing_image_says_how_to_build_it(self, tmp_path: Path) -> None:
        paths = image.LabPaths(tmp_path)
        with pytest.raises(image.LabUnavailable, match="lab.py build"):
            image.load_image(paths, "4k")
        image.write_json(paths.image_record("4k"), {"kernel": str(tmp_path / "Image"), "parts": []})
        with pytest.raises(image.LabUnavailable, match="lacks .*Image"):
            image.load_image(paths, "4k")

    def test_unavailable_without_root(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(image, "missing_tools", lambda: ["qemu-system-aarch64"])
        s = image.BuildSettings(tmp_path, ["4k"], 1, allow_apt=True, is_root=False)
        with pytest.raises(image.LabUnavailable, match="apt-get install -y qemu-system-arm"):
            image.ensure_tools(s)


class TestOverlay:
    def test_config_is_quoted_shell(self) -> None:
        cfg = overlay.GuestConfig("lab-arm64-4k", PurePosixPath("/work/my repo"), None, ("virtio_net", "9p"))
        text = cfg.shell()
        assert "KVMMM_REPO='/work/my repo'\n" in text and "KVMMM_SHARE=''\n" in text
        assert "KVMMM_MODULES='virtio_net 9p'\n" in text and "KVMMM_PORT=8888\n" in text

    def test_overlay_carries_the_plugin_at_the_hosts_path(self, tmp_path: Path) -> None:
        cfg = overlay.GuestConfig("h", PurePosixPath(REPO), PurePosixPath(REPO / "results/lab"), ("9p",))
        dist = {"METADATA": "Metadata-Version: 2.1\nName: pytest-kvmmm\nVersion: 0.1.0\n",
                "entry_points.txt": "[pytest11]\nkvmmm = pytest_kvmmm.plugin\n"}  # fmt: skip
        overlay.write_overlay(tmp_path / "o.cpio", cfg, REPO, dist)
        names = set(cpio.read_names((tmp_path / "o.cpio").read_bytes()))
        repo = str(REPO).lstrip("/")
        site = f"{recipe.GUEST_SITE}/pytest_kvmmm-0.1.0.dist-info"
        assert {"init", "etc/kvmmm-lab/server.py", "etc/kvmmm-lab/config", f"{site}/entry_points.txt",
                f"{repo}/pyproject.toml", f"{repo}/pytest_kvmmm/plugin.py",
                f"{repo}/pytest_kvmmm/host/kvmapi.py"} <= names  # fmt: skip
        assert not any("__pycache__" in n or n.startswith(f"{repo}/tests") for n in names)

    def test_guest_files_are_valid(self) -> None:
        compile((overlay.GUEST_DIR / "server.py").read_text(), "server.py", "exec")
        init = overlay.GUEST_DIR / "init"
        assert init.read_text().startswith("#!/bin/busybox sh\n")
        if shutil.which("sh"):
            subprocess.run(["sh", "-n", str(init)], check=True)


def spec(**kw: object) -> qemu.HostSpec:
    base: dict[str, object] = {"name": "lab-arm64-4k", "flavour": "4k", "kernel": Path("/k/Image"),
                               "initrd": Path("/r/initrd"), "port": 47011, "console": Path("/r/console.log")}  # fmt: skip
    return qemu.HostSpec(**{**base, **kw})  # type: ignore[arg-type]


class TestQemuArgs:
    def test_the_command_line(self) -> None:
        args = qemu.qemu_args(spec(cpu="max,lpa2=off", smp=2, mem="3G"))
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


def host_state(name: str, pid: int, argv: list[str] | None = None) -> qemu.HostState:
    return qemu.HostState(name, "4k", 47011, pid, argv or ["qemu-system-aarch64", name], "/c.log", 0.0)


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


class TestWrapper:
    def test_pytest_argv(self) -> None:
        argv = lab.pytest_argv(["--tx", "socket=127.0.0.1:47011"], [], Path("/r/lab"))
        assert argv[1:] == ["-m", "pytest", "--dist", "each", "--tx", "popen", "--tx", "socket=127.0.0.1:47011",
                            *lab.default_pytest_args(), "--kvm-results=/r/lab/lab.jsonl",
                            "--alluredir=/r/lab/allure"]  # fmt: skip

    def test_default_selection_is_the_lab_scale(self) -> None:
        from pytest_kvmmm.scale import SCALES

        args = lab.default_pytest_args()
        assert args[:4] == ["-m", "pagetable", "--kvm-scale", "lab"] and args[-2:] == ["-k", lab.LAB_K]
        assert "arch:aarch64,pxxv48_4k" in args
        assert "lab" in SCALES, "the plugin this checkout's lab.py runs defines the lab scale"

    def test_the_users_paths_win(self) -> None:
        argv = lab.pytest_argv([], ["-k", "x", "--alluredir=/elsewhere"], Path("/r/lab"))
        assert "--alluredir=/elsewhere" in argv and "--alluredir=/r/lab/allure" not in argv
        assert "--kvm-results=/r/lab/lab.jsonl" in argv
        assert lab.pytest_argv([], ["-q"], None)[-1] == "-q"

    @staticmethod
    def lab_records(modes: dict[str, tuple[str, ...]]) -> list[dict[str, object]]:
        """Records of a lab run: per host a test per mode, passed where ``modes`` says."""
        pages = {"vm": "4K", "lab-a": "4K", "lab-b": "16K"}
        all_modes = ("pxxv48_4k", "p52v48_4k", "p48v48_4k", "p48v48_16k")
        return [
            {"host": h, "nodeid": f"pytest_kvmmm/suite/test_mm.py::test_kvm_page_table[anonymous-{m}]",
             "outcome": "passed" if m in modes[h] else "skipped",
             "host_facts": {"page_size": pages[h], "ttrem": "2" if h != "vm" else "?"}}
            for h in ("vm", "lab-a", "lab-b") for m in all_modes
        ]  # fmt: skip

    def test_checks(self) -> None:
        states = [host_state("lab-a", 1), host_state("lab-b", 2)]
        states[0].flavour, states[1].flavour = "4k", "16k"
        for s in states:
            s.facts = {"kvm": {"ttrem": 2, "arm64_mode": "vhe"}}
        good = {"vm": ("pxxv48_4k",), "lab-a": ("p52v48_4k", "p48v48_4k", "p48v48_16k"), "lab-b": ("p48v48_4k", "p48v48_16k")}
        records = self.lab_records(good)
        assert lab.lab_checks(records, states) == []
        assert lab.mode_of(str(records[0]["nodeid"])) == "pxxv48_4k"

        states[1].facts = {"kvm": {"ttrem": None, "arm64_mode": "nvhe"}}
        problems = lab.lab_checks([*records[:8], *records[8:11]], states)
        assert any("lab-b: no TTRem" in p for p in problems)
        assert any("KVM mode nvhe" in p for p in problems)
        assert any("different numbers of tests" in p for p in problems)
        assert any("results name hosts" in p for p in lab.lab_checks(records[:8], states))

        states[1].facts = states[0].facts
        bad = self.lab_records({"vm": ("pxxv48_4k", "p48v48_4k"), "lab-a": ("p48v48_4k",), "lab-b": ("p48v48_4k",)})
        for r in bad:
            if r["host"] == "lab-b":
                r["host_facts"] = {"page_size": "4K", "ttrem": "2"}
        problems = lab.lab_checks(bad, states)
        assert any("vm: " in p and "p48v48_4k] passed, but p48v48_4k is not a guest mode of that architecture" in p
                   for p in problems)
        assert any("lab-b: results say page size 4K, expected 16K" in p for p in problems)
        assert any("the arm64 hosts ran the same guest modes (['p48v48_4k'])" in p for p in problems)
        nothing = self.lab_records({"vm": ("pxxv48_4k",), "lab-a": (), "lab-b": ("p48v48_4k",)})
        assert {"lab-a: no test passed", "lab-a: no arm64 guest mode passed"} <= set(lab.lab_checks(nothing, states))

    def test_read_results_gives_no_records_for_a_missing_or_broken_file(self, tmp_path: Path) -> None:
        good = tmp_path / "lab.jsonl"
        good.write_text('{"host": "a", "outcome": "passed"}\n\n{"host": "b", "outcome": "failed"}\n')
        assert lab.read_results(good) == [{"host": "a", "outcome": "passed"}, {"host": "b", "outcome": "failed"}]
        assert lab.read_results(tmp_path / "missing.jsonl") == []
        (tmp_path / "broken.jsonl").write_text('{"host": "a"}\n{"host": \n')
        assert lab.read_results(tmp_path / "broken.jsonl") == []

    def test_outcome_counts(self) -> None:
        counts = lab.outcome_counts([{"host": "a", "outcome": "passed"}, {"host": "a", "outcome": "passed"},
                                     {"host": "b", "outcome": "failed"}])  # fmt: skip
        assert counts == {"a": {"passed": 2}, "b": {"failed": 1}}

    def test_ci_stage_is_skipped_when_the_lab_cannot_be_had(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        def unavailable(args: object) -> int:
            raise image.LabUnavailable("qemu-system-aarch64 missing: run `apt-get install -y qemu-system-arm` as root")

        monkeypatch.setattr(lab, "cmd_build", unavailable)
        monkeypatch.setattr(lab, "run_lab", pytest.fail)
        assert lab.main(["ci"]) == 0
        assert "SKIPPED: the arm64 lab cannot be built here: qemu-system-aarch64 missing" in capsys.readouterr().err

    def test_ci_stage_without_a_share_fails_without_reading_results(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        states = [host_state("lab-a", 1)]
        monkeypatch.setattr(lab, "cmd_build", lambda args: 0)
        monkeypatch.setattr(lab, "run_lab", lambda args: (0, 1.0, states))
        monkeypatch.setattr(lab, "read_results", pytest.fail)  # no <cwd>/lab.jsonl either
        assert lab.main(["ci", "--share", ""]) == 1
        err = capsys.readouterr().err
        assert "[lab] FAILED: lab.py ci needs --share: it checks the results file\n" in err
        assert err.count("FAILED") == 1

    def test_a_machine_too_small_for_the_hosts(self) -> None:
        gib = 1 << 30
        assert lab.memory_shortfall(2, "3G", 24 * gib) is None
        assert lab.memory_shortfall(2, "3G", None) is None  # cannot tell: try
        assert lab.memory_shortfall(2, "3G", 5 * gib) == (
            "2 lab hosts of 3G need 7.0 GiB of free memory, this machine has 5.0 GiB available "
            "(fewer hosts: --flavours 4k; smaller: --mem 2G)")

    def test_ci_stage_is_skipped_when_the_hosts_cannot_run(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        def too_small(args: object) -> None:
            raise image.LabUnavailable("2 lab hosts of 3G need 7.0 GiB of free memory")

        monkeypatch.setattr(lab, "cmd_build", lambda args: 0)
        monkeypatch.setattr(lab, "run_lab", too_small)
        assert lab.main(["ci"]) == 0
        assert "SKIPPED: the arm64 lab cannot run here: 2 lab hosts of 3G need" in capsys.readouterr().err

    def test_a_failed_download_means_no_lab(self) -> None:
        with pytest.raises(image.LabUnavailable, match="pip download failed"):
            image.checked([sys.executable, "-c", "raise SystemExit('no network')"], "pip download", image.LabUnavailable)
        with pytest.raises(LabError, match="compileall failed.*boom") as info:
            image.checked([sys.executable, "-c", "raise SystemExit('boom')"], "compileall")
        assert not isinstance(info.value, image.LabUnavailable)

    def test_unknown_flavour(self) -> None:
        with pytest.raises(SystemExit):
            lab.parse_args(["up", "--flavours", "64k"])
        assert lab.parse_args(["up", "--flavours", "16k"]).flavours == ["16k"]


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
    proc = subprocess.run([sys.executable, str(REPO / "ci/lab/lab.py"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "lab.py build" in proc.stdout
    assert stat.S_IMODE((REPO / "ci/lab/lab.py").stat().st_mode) & 0o111
