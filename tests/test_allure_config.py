"""Allure 3's configuration: the same categories as categories.json, one environment per host.

Where Node.js is installed, the written ``allurerc.mjs`` is loaded by Node itself: its
environment matchers and category regexes (JavaScript) must decide as the Python ones do, with
Allure 3's rule that a result gets the first category that matches. (ci/allure_report.sh then
checks the real Allure 3 report in a browser.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_kvmmm.reports.allure_config import (
    CONFIG_FILE,
    GROUP_BY,
    allurerc,
    environment_id,
    environment_name,
    write_config,
)
from pytest_kvmmm.reports.allure_files import CATEGORIES, categorize, write_session_files

MESSAGES = [
    ("failed", "kvm_page_table_test passed, but the kernel logged WARN during the run\n[ 12.5] WARNING: CPU: 1 PID: 9 at x.c:1 f"),
    ("failed", "set_memory_region_test passed, but the kernel logged KVM internal error during the run"),
    ("failed", "kvm_page_table_test exit 254: lib/kvm_util.c:1000: mmap() failed, errno: 12 (Cannot allocate memory)"),
    ("failed", "dirty_log_perf_test timed out after 120s; its process group was killed"),
    ("failed", "segv crashed: killed by SIGSEGV (signal 11)"),
    ("broken", "dirty_log_test exit 254: dirty_log_test.c:561: test_bit_le(page, bmap)\n/ a slash \\/ and a quote \""),
    ("skipped", "rseq_test not found in /root/.cache/pytest-kvmmm/selftests/6.12.117 (kvmmm-build cache 6.12.117)"),
    ("skipped", "the 2048 kB hugetlb pool has 0 free pages, 512 needed"),
    ("skipped", "needs a aarch64 host, this one is x86_64"),
    ("failed", "an assertion of another kind"),
    ("passed", ""),
]


def test_environment_ids_and_names_are_what_allure_3_accepts() -> None:
    ids: set[str] = set()
    assert environment_id("lab-arm64-4k", ids) == "lab-arm64-4k"
    assert environment_id("host.example.org", ids) == "host_example_org"
    assert environment_id("host_example.org", ids) == "host_example_org_2"
    assert environment_id("", ids) == "host"
    assert environment_id("default", ids) == "default_2", "'default' is Allure 3's environment of unclaimed results"
    long = environment_id("x" * 100, ids)
    assert len(long) == 64 and len(environment_id("x" * 100, ids)) == 64
    names: set[str] = set()
    assert environment_name("host.example.org", names) == "host.example.org"
    assert environment_name("a/b\x07", names) == "a_b_"
    assert environment_name("..", names) == "host"
    assert environment_name("default", names) == "default_2"


def test_the_config_is_written_for_every_host_of_the_directory(tmp_path: Path) -> None:
    write_session_files(tmp_path, {"lab-a": {"kernel": "6.12"}})
    write_session_files(tmp_path, {"lab-b": {"kernel": "6.16"}})  # a second run into the same directory
    text = write_config(tmp_path).read_text()
    assert (tmp_path / CONFIG_FILE).stat().st_mode & 0o777 == 0o644
    assert 'name: "lab-a",\n      variables: {"kernel": "6.12"}' in text
    assert 'name: "lab-b",\n      variables: {"kernel": "6.16"}' in text
    assert all(json.dumps(c.name) in text for c in CATEGORIES)


def test_a_foreign_environment_file_is_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("hosts=stolen\nstolen.kernel=x\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "environment.properties").symlink_to(secret)
    text = write_config(tmp_path / "results").read_text()
    assert "stolen" not in text


NODE_CHECK = """
const c = (await import(process.argv[2])).default;
const [messages, hosts] = JSON.parse(process.argv[3]);
const first = ([status, message]) => {
  const rule = c.categories.rules.find((r) => r.matchers.statuses.includes(status) && r.matchers.message.test(message));
  return rule ? rule.name : null;
};
const envs = Object.fromEntries(Object.entries(c.environments).map(([id, e]) =>
  [id, [e.name, hosts.filter((h) => e.matcher({ labels: [{ name: "parentSuite", value: h }] }))]]));
console.log(JSON.stringify({ categories: messages.map(first), envs, groupBy: c.plugins.awesome.options.groupBy }));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed (it runs Allure 3)")
def test_node_decides_as_python_does(tmp_path: Path) -> None:
    config = tmp_path / CONFIG_FILE
    config.write_text(allurerc({"lab-a": {"kernel": "6.12"}, "lab.b": {}, 'odd"host': {}}))
    script = tmp_path / "check.mjs"
    script.write_text(NODE_CHECK)
    hosts = ["lab-a", "lab.b", 'odd"host', "other"]
    proc = subprocess.run(["node", str(script), config.as_uri(), json.dumps([MESSAGES, hosts])],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    expected = [(categorize(s, m) or [None])[0] for s, m in MESSAGES]
    assert expected == ["Kernel warning in the log", "KVM internal error", "Host resource shortage", "Timeout", "Crash",
                        "Guest assertion failure", "Selftest binary missing", "Host resource shortage", "Host lacks a feature",
                        None, None]
    assert seen["categories"] == expected
    assert seen["envs"] == {"lab-a": ["lab-a", ["lab-a"]], "lab_b": ["lab.b", ["lab.b"]], "odd_host": ['odd"host', ['odd"host']]}
    assert seen["groupBy"] == list(GROUP_BY)


def test_a_run_with_alluredir_writes_the_config(pytester: pytest.Pytester, tmp_path: Path) -> None:
    from fakes import make_fake, make_host_root

    make_fake(tmp_path / "bins", "ok_test", stdout="ok\n")
    root = make_host_root(tmp_path / "root", hostname="lab-x")
    pytester.makepyfile('import pytest\n\n@pytest.mark.kvm_selftest("ok_test")\ndef test_ok():\n    pass\n')
    res = pytester.runpytest("-p", "no:cacheprovider", f"--kvm-host-snapshot={root}", f"--kvm-selftests={tmp_path / 'bins'}",
                             f"--alluredir={tmp_path / 'allure'}")
    res.assert_outcomes(passed=1)
    assert '"lab-x": {\n      name: "lab-x",' in (tmp_path / "allure" / CONFIG_FILE).read_text()
