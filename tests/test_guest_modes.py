"""Guest modes: the static catalogue, ``-h`` table parsing, and the name -> id resolver.

Goldens in ``tests/golden/help/``: ``*.real-6.12.117-x86_64.*`` are captured from real
binaries (``capture.py`` there), ``*.synthetic-*.stdout`` are written from the kernel
sources for builds and arches this host cannot run.
"""

from __future__ import annotations

import os
import stat
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from fakes import golden, make_fake, make_golden_fake
from pytest_kvmmm.engine import guest_modes as gm
from pytest_kvmmm.engine.guest_modes import (
    BY_NAME,
    DEFAULT_MODE,
    GUEST_MODES,
    ModeUnavailable,
    arch_mismatch,
    mode_args,
    modes_for_arch,
    parse_mode_help,
    parse_mode_selection,
    resolve_mode,
)
from pytest_kvmmm.engine.metrics import guest_mode_name

HELP = Path(__file__).parent / "golden" / "help"
#: arm64 guest modes in the order ``guest_modes_append_default()`` appends them (6.12 lib/guest_modes.c).
ARM64_ORDER = (
    "p52v48_4k", "p52v48_16k", "p52v48_64k", "p48v48_4k", "p48v48_16k", "p48v48_64k", "p40v48_4k", "p40v48_16k",
    "p40v48_64k", "p36v48_4k", "p36v48_16k", "p36v48_64k", "p36v47_16k",
)
REAL = "real-6.12.117-x86_64"
WITH_TABLE = (
    "kvm_page_table_test", "dirty_log_perf_test", "demand_paging_test",
    "access_tracking_perf_test", "memslot_modification_stress_test", "dirty_log_test",
)  # fmt: skip
WITHOUT_TABLE = ("max_guest_memory_test", "memslot_perf_test", "dirty_log_page_splitting_test")
ORDER_612 = (
    "p52v48_4k", "p52v48_16k", "p52v48_64k", "p48v48_4k", "p48v48_16k", "p48v48_64k",
    "p40v48_4k", "p40v48_16k", "p40v48_64k", "pxxv48_4k", "p47v64_4k", "p44v64_4k",
    "p36v48_4k", "p36v48_16k", "p36v48_64k", "p36v47_16k",
)  # fmt: skip


def counting_fake(directory: Path, name: str, stdout: str, exit: int = 0) -> tuple[Path, Path]:
    """A fake that appends its argv to a log per invocation: (binary, log)."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / f"{name}.calls"
    path = directory / name
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""\
        import sys
        with open({str(log)!r}, "a") as f:
            f.write(" ".join(sys.argv[1:]) + "\\n")
        sys.stdout.write({stdout!r})
        sys.exit({exit!r})
    """))  # fmt: skip
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path, log


def calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    gm.clear_cache()
    yield
    gm.clear_cache()


# --- parsing the -h tables -------------------------------------------------------------


@pytest.mark.parametrize("binary", WITH_TABLE)
def test_real_612_tables(binary: str) -> None:
    modes = parse_mode_help(golden(f"help/{binary}.{REAL}.stdout"))
    assert tuple(modes) == ORDER_612
    assert [e.mode_id for e in modes.values()] == list(range(16))
    assert [e.name for e in modes.values() if e.supported] == ["pxxv48_4k"]
    assert modes["pxxv48_4k"].text == "PA-bits:ANY, VA-bits:48,  4K pages"


@pytest.mark.parametrize("binary", WITHOUT_TABLE)
def test_real_help_without_table(binary: str) -> None:
    stem = f"{binary}.{REAL}"
    assert parse_mode_help(golden(f"help/{stem}.stdout") + golden(f"help/{stem}.stderr")) == {}


def test_real_exit_codes_vary() -> None:
    """Why the resolver reads text and never the exit code."""
    rcs = {b: int(golden(f"help/{b}.{REAL}.rc")) for b in (*WITH_TABLE, *WITHOUT_TABLE)}
    assert {rcs[b] for b in WITH_TABLE} == {0}
    assert (rcs["max_guest_memory_test"], rcs["memslot_perf_test"], rcs["dirty_log_page_splitting_test"]) == (1, 255, 4)


def test_synthetic_61_has_15_modes_and_default_8() -> None:
    modes = parse_mode_help(golden("help/kvm_page_table_test.synthetic-6.1-x86_64.stdout"))
    assert len(modes) == 15 and "p52v48_16k" not in modes
    assert modes["pxxv48_4k"].mode_id == 8 and modes["pxxv48_4k"].supported
    assert modes["p36v47_16k"].mode_id == 14


def test_synthetic_arm64_supported_set() -> None:
    """An IPA-48 host with 4K and 64K granules: the -h table marks these supported."""
    modes = parse_mode_help(golden("help/kvm_page_table_test.synthetic-6.12-aarch64-ipa48-4k64k.stdout"))
    supported = tuple(e.name for e in modes.values() if e.supported)
    assert supported == ("p48v48_4k", "p48v48_64k", "p40v48_4k", "p40v48_64k", "p36v48_4k", "p36v48_64k")
    assert tuple(modes) == ORDER_612

def test_synthetic_616_inserts_p47v47_16k_before_p36v47_16k() -> None:
    modes = parse_mode_help(golden("help/kvm_page_table_test.synthetic-6.16-loongarch64.stdout"))
    assert len(modes) == 17
    assert (modes["p47v47_16k"].mode_id, modes["p36v47_16k"].mode_id) == (15, 16)
    assert [e.name for e in modes.values() if e.supported] == ["p47v47_16k"]


def test_synthetic_619_renames_pxxv48_4k() -> None:
    modes = parse_mode_help(golden("help/kvm_page_table_test.synthetic-6.19-x86_64.stdout"))
    assert "pxxv48_4k" not in modes
    assert modes["pxxvyy_4k"].mode_id == 9 and modes["pxxvyy_4k"].supported
    assert modes["pxxvyy_4k"].text == "PA-bits:ANY, VA-bits:48 or 57, 4K pages"


@pytest.mark.parametrize(
    "garbage",
    ["", "\x00\xff garbage", "Testing guest mode: PA-bits:ANY, VA-bits:48,  4K pages\n",
     "         9:    PA-bits:??, VA-bits:48,  4K pages (supported)\n", "1..0 # SKIP - nope\n"],
)  # fmt: skip
def test_parse_garbage_gives_nothing(garbage: str) -> None:
    assert parse_mode_help(garbage) == {}


def test_parse_tolerates_crlf_tabs_and_mixed_output() -> None:
    out = "noise\r\n\t 3:\tPA-bits:48,  VA-bits:48,  4K pages (supported)\r\n         4:    PA-bits:48,  VA-bits:48, 16K pages\r\n"
    modes = parse_mode_help(out)
    assert modes["p48v48_4k"].supported and modes["p48v48_4k"].mode_id == 3
    assert not modes["p48v48_16k"].supported


# --- the resolver ------------------------------------------------------------------------


def test_pxxv48_4k_id_differs_between_61_and_612(tmp_path: Path) -> None:
    old = make_fake(tmp_path / "61", "kvm_page_table_test", stdout=golden("help/kvm_page_table_test.synthetic-6.1-x86_64.stdout"))
    new = make_golden_fake(tmp_path / "612", "kvm_page_table_test", f"help/kvm_page_table_test.{REAL}")
    assert mode_args(old, "pxxv48_4k") == ("-m", "8")
    assert mode_args(new, "pxxv48_4k") == ("-m", "9")


def test_unsupported_mode_names_itself(tmp_path: Path) -> None:
    binary = make_golden_fake(tmp_path, "kvm_page_table_test", f"help/kvm_page_table_test.{REAL}")
    res = resolve_mode(binary, "p52v48_4k")
    assert (res.mode_id, res.supported, res.runnable) == (0, False, False)
    assert res.reason is not None
    assert "guest mode p52v48_4k (PA-bits:52, VA-bits:48, 4K pages) is not supported by this host/build" in res.reason
    assert "without '(supported)'" in res.reason and "supported: pxxv48_4k" in res.reason
    with pytest.raises(ModeUnavailable, match="p52v48_4k") as info:
        mode_args(binary, "p52v48_4k")
    assert info.value.resolution == res


@pytest.mark.parametrize(
    ("help_file", "name", "hint"),
    [(f"kvm_page_table_test.{REAL}.stdout", "p47v47_16k", "16 modes; p47v47_16k: added in 6.16"),
     (f"kvm_page_table_test.{REAL}.stdout", "pxxvyy_4k", "added in 6.19"),
     ("kvm_page_table_test.synthetic-6.19-x86_64.stdout", "pxxv48_4k", "renamed pxxvyy_4k in 6.19"),
     ("kvm_page_table_test.synthetic-6.1-x86_64.stdout", "p52v48_16k", "15 modes; p52v48_16k: added in 6.8")],
)  # fmt: skip
def test_unknown_mode_says_so(tmp_path: Path, help_file: str, name: str, hint: str) -> None:
    binary = make_fake(tmp_path, "kvm_page_table_test", stdout=golden(f"help/{help_file}"))
    res = resolve_mode(binary, name)
    assert res.mode_id is None and not res.supported
    assert res.reason is not None
    assert f"guest mode {name} (" in res.reason and "is unknown to this build of kvm_page_table_test" in res.reason
    assert hint in res.reason


def test_default_needs_no_help(tmp_path: Path) -> None:
    binary, log = counting_fake(tmp_path, "kvm_page_table_test", golden(f"help/kvm_page_table_test.{REAL}.stdout"))
    assert mode_args(binary, DEFAULT_MODE) == ()
    assert resolve_mode(binary, DEFAULT_MODE).runnable
    assert calls(log) == []


def test_help_runs_once_per_binary(tmp_path: Path) -> None:
    table = golden(f"help/kvm_page_table_test.{REAL}.stdout")
    a, log_a = counting_fake(tmp_path / "a", "kvm_page_table_test", table)
    b, log_b = counting_fake(tmp_path / "b", "dirty_log_perf_test", table, exit=255)
    for name in ("pxxv48_4k", "p52v48_4k", "p47v47_16k", "pxxv48_4k"):
        resolve_mode(a, name)
        resolve_mode(b, name)
    assert mode_args(a, "pxxv48_4k") == mode_args(b, "pxxv48_4k") == ("-m", "9")  # exit 255 is fine
    link = tmp_path / "link"
    link.symlink_to(a)
    resolve_mode(link, "pxxv48_4k")  # the same file by another path
    assert calls(log_a) == ["-h"] and calls(log_b) == ["-h"]


def test_rebuilt_binary_is_read_again(tmp_path: Path) -> None:
    binary, log = counting_fake(tmp_path, "kvm_page_table_test", golden(f"help/kvm_page_table_test.{REAL}.stdout"))
    assert mode_args(binary, "pxxv48_4k") == ("-m", "9")
    st = binary.stat()
    os.utime(binary, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    mode_args(binary, "pxxv48_4k")
    assert len(calls(log)) == 2


def test_hanging_help_times_out_once(tmp_path: Path) -> None:
    binary = make_fake(tmp_path, "kvm_page_table_test", hang=True)
    res = resolve_mode(binary, "pxxv48_4k", timeout=0.3)
    assert res.reason is not None and "did not finish within 0.3 s" in res.reason
    assert res.reason.startswith("guest mode pxxv48_4k (PA-bits:ANY, VA-bits:48, 4K pages) cannot be selected")
    assert gm.read_help_modes(binary, timeout=0.3).problem == gm.read_help_modes(binary).problem  # cached
    with pytest.raises(ModeUnavailable):
        mode_args(binary, "p40v48_4k")


def test_garbage_help(tmp_path: Path) -> None:
    binary = make_fake(tmp_path, "kvm_page_table_test", raw_stdout=bytes(range(256)) * 4, exit=3)
    res = resolve_mode(binary, "pxxv48_4k")
    assert res.reason is not None
    assert "`kvm_page_table_test -h` (exit 3) prints no guest-mode table" in res.reason


@pytest.mark.parametrize("binary", WITHOUT_TABLE)
def test_binaries_without_table_say_why(tmp_path: Path, binary: str) -> None:
    res = resolve_mode(make_golden_fake(tmp_path, binary, f"help/{binary}.{REAL}"), "pxxv48_4k")
    assert res.reason is not None and "prints no guest-mode table" in res.reason
    if binary == "dirty_log_page_splitting_test":  # requirements are checked before -h
        assert "skipped before printing help: '1..0 # SKIP - Requirement not met" in res.reason


def test_missing_binary(tmp_path: Path) -> None:
    res = resolve_mode(tmp_path / "nope", "pxxv48_4k")
    assert res.reason is not None and "cannot start" in res.reason


# --- the catalogue and the option ------------------------------------------------------


def test_catalogue_names_match_their_strings() -> None:
    assert len(BY_NAME) == len(GUEST_MODES)
    for mode in GUEST_MODES:
        assert guest_mode_name(mode.description) == mode.name
        assert mode.arches and set(mode.arches) <= set(gm.ARCHES)


def test_catalogue_covers_every_golden_table() -> None:
    for path in HELP.glob("*.stdout"):
        assert set(parse_mode_help(path.read_text())) <= set(BY_NAME), path.name


def test_modes_per_arch() -> None:
    assert modes_for_arch("x86_64") == ("pxxv48_4k", "pxxvyy_4k")
    assert modes_for_arch("s390x") == ("p47v64_4k", "p44v64_4k")
    assert modes_for_arch("loongarch64") == ("p47v47_16k",)
    assert modes_for_arch("arm64") == modes_for_arch("aarch64") == ARM64_ORDER
    assert {"p52v48_4k", "p48v48_4k", "p40v48_4k"} <= set(modes_for_arch("riscv64"))
    assert modes_for_arch("ppc64le") == ()


def test_selection_forms() -> None:
    assert parse_mode_selection("default") == (DEFAULT_MODE,)
    assert parse_mode_selection("all") == tuple(BY_NAME)
    assert {"pxxv48_4k", "p44v64_4k", "p47v47_16k", "p40v48_64k"} <= set(parse_mode_selection("all"))
    assert parse_mode_selection("arch:aarch64") == modes_for_arch("aarch64")
    assert parse_mode_selection("p40v48_4k,p48v48_64k") == ("p40v48_4k", "p48v48_64k")
    assert parse_mode_selection(" P40V48_4K , default,p40v48_4k,arch:x86") == ("p40v48_4k", DEFAULT_MODE, "pxxv48_4k", "pxxvyy_4k")


@pytest.mark.parametrize(
    ("value", "message"),
    [("p40v48_4kk", "unknown guest mode 'p40v48_4kk'"), ("arch:sparc", "unknown arch 'sparc'"),
     ("", "empty entry"), ("default,", "empty entry")],
)  # fmt: skip
def test_selection_errors_list_valid_names(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_mode_selection(value)
    if "arch" not in message:
        assert "p40v48_4k, p40v48_16k" in str(info.value) and "arch:<x86_64|aarch64" in str(info.value)


def test_another_archs_mode_is_named_as_such() -> None:
    assert arch_mismatch("p52v48_4k", "x86_64") == (
        "guest mode p52v48_4k (PA-bits:52, VA-bits:48, 4K pages) is for aarch64 or riscv64 hosts, this host is x86_64")
    assert arch_mismatch("pxxv48_4k", "arm64") == (
        "guest mode pxxv48_4k (PA-bits:ANY, VA-bits:48, 4K pages) is for x86_64 hosts, this host is aarch64")
    assert arch_mismatch("p52v48_4k", "aarch64") is None
    assert arch_mismatch("p52v48_4k", None) is None  # unknown host arch: the build's -h decides
