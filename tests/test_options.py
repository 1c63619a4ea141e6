"""The option resolver: command line > environment > ini > default, and a bad value names
where it came from (the option, the variable or the ini key), against a stand-in config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pytest_kvmmm.engine.discovery import SearchRoot
from pytest_kvmmm.pytest.invocation import Raw, Sources
from pytest_kvmmm.pytest.options import DEFAULT_TIMEOUT_S, resolve


class Config:
    """``getoption``/``getini`` as pytest answers them: unset options are None, unset ini ""."""

    def __init__(self, options: dict[str, Any] | None = None, ini: dict[str, Any] | None = None) -> None:
        self.options = {"kvm_param_values": [], "kvm_allow_host_changes": False, "kvm_allow_missing": False, **(options or {})}
        self.ini = {"kvm_kernel_log_noise": [], **(ini or {})}

    def getoption(self, name: str) -> Any:
        return self.options.get(name)

    def getini(self, name: str) -> Any:
        return self.ini.get(name, "")


def test_defaults() -> None:
    s = resolve(Config(), env={})
    assert (s.timeout_s, s.scale, s.repeat, s.kernel_log, s.counters) == (DEFAULT_TIMEOUT_S, "default", 1, "fail", ())
    assert (s.explicit_root, s.results, s.host_root, s.host_source, s.backings) == (None, None, Path("/"), "/", None)
    assert s.modes == ("default",) and not s.allow_missing


def test_command_line_beats_environment_beats_ini() -> None:
    def pick(config: Config, env: dict[str, str]) -> Raw | None:
        return Sources(config, env).pick("kvm_selftests", env=("KVM_SELFTESTS_DIR",), ini="kvm_selftests")

    assert pick(Config({"kvm_selftests": "/opt"}, {"kvm_selftests": "/ini"}), {"KVM_SELFTESTS_DIR": "/env"}) == Raw("/opt", "--kvm-selftests")
    config = Config(ini={"kvm_selftests": "/ini"})
    assert pick(config, {"KVM_SELFTESTS_DIR": "/env"}) == Raw("/env", "$KVM_SELFTESTS_DIR")
    assert pick(config, {}) == Raw("/ini", "ini kvm_selftests")
    assert pick(Config(), {}) is None


def test_an_ini_directory_is_relative_to_the_ini_file(tmp_path: Path) -> None:
    (tmp_path / "bins").mkdir()
    config = Config(ini={"kvm_selftests": "bins"})
    config.inipath = tmp_path / "pytest.ini"  # type: ignore[attr-defined]
    assert resolve(config, env={}).explicit_root == SearchRoot(tmp_path / "bins", "ini kvm_selftests")


def test_the_selftests_directory_keeps_where_it_came_from(tmp_path: Path) -> None:
    s = resolve(Config(ini={"kvm_selftests": str(tmp_path)}), env={})
    assert s.explicit_root == SearchRoot(tmp_path, "ini kvm_selftests")
    s = resolve(Config(), env={"KVM_SELFTESTS_DIR": str(tmp_path)})
    assert s.explicit_root == SearchRoot(tmp_path, "$KVM_SELFTESTS_DIR")


@pytest.mark.parametrize(
    ("options", "ini", "env", "message"),
    [
        ({"kvm_timeout": "soon"}, {}, {}, "--kvm-timeout: 'soon' is not a number of seconds"),
        ({}, {"kvm_timeout": "-3"}, {}, "ini kvm_timeout: the timeout must be a finite positive number of seconds, got '-3'"),
        ({"kvm_timeout": ""}, {"kvm_timeout": "30"}, {}, "--kvm-timeout: '' is not a number of seconds"),
        ({}, {"kvm_counters": "no_such_set"}, {}, "ini kvm_counters: "),
        ({}, {"kvm_scale": "huge"}, {}, "ini kvm_scale: unknown scale 'huge'; choose one of"),
        ({"kvm_scale": "huge"}, {"kvm_scale": "smoke"}, {}, "--kvm-scale: unknown scale 'huge'"),
        ({}, {"kvm_repeat": "0"}, {}, "ini kvm_repeat: '0' is not a positive number of runs"),
        ({"kvm_repeat": "x"}, {}, {}, "--kvm-repeat: 'x' is not a positive number of runs"),
        ({}, {"kvm_kernel_log": "loud"}, {}, "ini kvm_kernel_log: unknown kernel log mode 'loud'; choose one of fail, report, off"),
        ({}, {"kvm_guest_modes": "p99v99_1k"}, {}, "ini kvm_guest_modes: "),
        ({"kvm_guest_modes": "p99v99_1k"}, {}, {}, "--kvm-guest-modes: "),
        ({}, {"kvm_backing_srcs": "anonymous,swap"}, {}, "ini kvm_backing_srcs: unknown backing source(s) swap"),
        ({"kvm_backing_srcs": "swap"}, {}, {}, "--kvm-backing-srcs: unknown backing source(s) swap"),
        ({}, {"kvm_selftests": "/nonexistent/selftests"}, {}, "ini kvm_selftests: /nonexistent/selftests is not a directory"),
        ({}, {}, {"KVM_SELFTESTS_DIR": "/nonexistent/selftests"}, "$KVM_SELFTESTS_DIR: /nonexistent/selftests is not a"),
        ({}, {}, {"KVMMM_SELFTESTS_DIR": "/nonexistent/new"}, "$KVMMM_SELFTESTS_DIR: /nonexistent/new is not a"),
        ({}, {"kvm_selftests": "/tmp"}, {"KVMMM_SELFTESTS_DIR": "/nonexistent/new", "KVM_SELFTESTS_DIR": "/tmp"},
         "$KVMMM_SELFTESTS_DIR: /nonexistent/new is not a"),
        ({}, {}, {"KVMMM_HOST_SNAPSHOT": "/nonexistent/snapshot"}, "$KVMMM_HOST_SNAPSHOT: "),
        ({"kvm_host_snapshot": "/nonexistent/snapshot"}, {}, {}, "--kvm-host-snapshot: "),
        ({}, {"kvm_kernel_log_noise": ["("]}, {}, "ini kvm_kernel_log_noise: "),
        ({"kvm_param_values": ["eager_page_split"]}, {}, {}, "--kvm-param-values: "),
        ({"kvm_sweep": "vcpus=1,x"}, {}, {}, "--kvm-sweep: 'vcpus=1,x': give vcpus=N,N,..."),
        ({}, {"kvm_sweep": "memory=1G"}, {}, "ini kvm_sweep: 'memory=1G': give vcpus=N,N,..."),
        ({}, {"kvm_sweep": "vcpus=0"}, {}, "ini kvm_sweep: 'vcpus=0'"),
    ],
)
def test_a_bad_value_names_where_it_came_from(
    options: dict[str, Any], ini: dict[str, Any], env: dict[str, str], message: str
) -> None:
    with pytest.raises(pytest.UsageError) as err:
        resolve(Config(options, ini), env=env)
    assert str(err.value).startswith(message), str(err.value)


def test_good_values_from_each_source(tmp_path: Path) -> None:
    s = resolve(Config({"kvm_timeout": "30", "kvm_backing_srcs": "all"}, {"kvm_scale": "smoke", "kvm_repeat": "3",
                                                                      "kvm_kernel_log": "report"}), env={})
    assert (s.timeout_s, s.scale, s.repeat, s.kernel_log) == (30.0, "smoke", 3, "report")
    assert s.backings is not None and "anonymous_thp" in s.backings
    s = resolve(Config({"kvm_results": str(tmp_path / "r.jsonl"), "kvm_allow_missing": True}), env={})
    assert s.results == tmp_path / "r.jsonl" and s.allow_missing


def test_a_vcpu_sweep_is_parsed_in_order_without_repeats() -> None:
    assert resolve(Config({"kvm_sweep": "vcpus=4, 1,2,4"}, {}), {}).sweep_vcpus == (4, 1, 2)
    assert resolve(Config({}, {}), {}).sweep_vcpus == ()
