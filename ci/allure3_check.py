"""The Allure 3 half of ci/allure_check.py: Allure 3 (npm ``allure@3``, Node.js, no Java) generates
a report from the same results, configured by the ``allurerc.mjs`` the plugin wrote beside them.

Checked on the report's own data (``widgets/``): an environment per host, named after it, with
the host's facts as its variables; the categories are ours and none of Allure 3's defaults
("Product errors", "Test errors"), each with the count ``allure_files.categorize`` predicts
(its first category: Allure 3 gives a result the first rule that matches); each host's tree
starts with the host, then the binaries. Then in headless Chromium: the overview groups by
environment and host, the categories page lists ours, and choosing a host's environment shows
its tree and facts.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

from allure_lib import ARM_HOST, Context, browse, read_json, results_of, run

from pytest_kvmmm.reports.allure_config import CONFIG_FILE
from pytest_kvmmm.reports.allure_files import CATEGORIES, categorize

DEFAULTS = {"Product errors", "Test errors"}


def predicted_categories(results: Path) -> Counter[str]:
    """Each result's first category, as ``categorize`` decides it; Allure 3's defaults otherwise."""
    predicted: Counter[str] = Counter()
    for r in results_of(results):
        if r["status"] in ("passed", "unknown"):
            continue
        first = categorize(r["status"], (r.get("statusDetails") or {}).get("message") or "")[:1]
        fallback = {"failed": ["Product errors"], "broken": ["Test errors"]}.get(r["status"], [])
        predicted.update(first or fallback)
    return predicted


def check_data(ctx: Context, report3: Path) -> dict[str, Any]:
    """What Allure 3 computed, from its widgets: environments, categories, trees."""
    check, hosts = ctx.check, (ctx.host_name, ARM_HOST)
    widgets = report3 / "widgets"
    envs = {e["name"]: e["id"] for e in read_json(widgets / "environments.json")}
    check("allure 3: an environment per host", set(hosts) <= set(envs), str(sorted(envs)))
    default_tree = widgets / "default" / "tree.json"
    unclaimed = read_json(default_tree)["root"] if default_tree.exists() else {}
    check("allure 3: every result is in its host's environment (none in 'default')",
          not unclaimed.get("groups") and not unclaimed.get("leaves"), str(unclaimed)[:200])
    cats = read_json(widgets / "categories.json")
    shown = {cats["nodes"][r]["name"]: cats["nodes"][r]["statistic"].get("total", 0) for r in cats["roots"]}
    ours = {c.name for c in CATEGORIES}
    check("allure 3: the categories are ours, none of Allure 3's defaults", shown and set(shown) <= ours, str(sorted(shown)))
    check("allure 3: host resource shortage from real ENOMEM output", shown.get("Host resource shortage", 0) > 0)
    predicted = predicted_categories(ctx.results)
    check("allure 3: each category's count is what categorize() predicts (first match)", shown == dict(predicted),
          f"allure 3 {shown}, python {dict(predicted)}")
    for host in hosts:
        env = envs.get(host, "")
        tree = read_json(widgets / env / "tree.json") if (widgets / env / "tree.json").exists() else {"root": {"groups": []}, "groupsById": {}}
        tops = [tree["groupsById"][g]["name"] for g in tree["root"].get("groups", [])]
        binaries = {tree["groupsById"][g]["name"] for t in tree["root"].get("groups", []) for g in tree["groupsById"][t].get("groups", [])}
        check(f"allure 3: {host}'s tree is host, then binary", tops == [host] and {"kvm_page_table_test", "dirty_log_test"} <= binaries,
              f"{tops}, {sorted(binaries)[:4]}")
    variables = read_json(widgets / envs.get(ctx.host_name, "") / "variables.json") if ctx.host_name in envs else {}
    arm = read_json(widgets / envs.get(ARM_HOST, "") / "variables.json") if ARM_HOST in envs else {}
    check("allure 3: each environment's variables are its host's facts",
          variables.get("kernel") == platform.release() and arm.get("arch") == "aarch64" and arm.get("ttrem") == "2",
          f"{ctx.host_name}: kernel {variables.get('kernel')}; {ARM_HOST}: arch {arm.get('arch')}, ttrem {arm.get('ttrem')}")
    return {"categories": shown, "environments": envs}


def check_pages(ctx: Context, report3: Path, shown: dict[str, int], envs: dict[str, str]) -> None:
    """The report in headless Chromium: overview, categories, then one host's environment chosen
    (Allure 3 keeps the choice in localStorage, so that page comes last)."""
    check, out = ctx.check, ctx.out
    pages: list[dict[str, Any]] = [
        {"name": "overview", "ready": "body", "screenshot": str(out / "allure3-overview.png"), "height": 1400},
        {"name": "categories", "ready": "body", "hash": "categories", "screenshot": str(out / "allure3-categories.png")},
        {"name": "arm", "ready": "body", "storage": {"currentEnvironment": json.dumps(envs.get(ARM_HOST, ""))},
         "screenshot": str(out / "allure3-environment.png"), "height": 1400},
    ]
    seen, proc = browse(ctx, report3, pages, "-allure3")
    check("allure 3: the report opens in headless Chromium", proc.returncode == 0 and seen, proc.stderr.strip()[-400:])
    if not seen:
        return
    overview = seen["overview"]
    check("allure 3 overview: a group per host's environment, each starting with the host",
          all(f'Environment: "{h}"' in overview for h in (ctx.host_name, ARM_HOST))
          and "kvm_page_table_test" in overview)
    check("allure 3 overview: no Allure 3 default category", not any(d in overview for d in DEFAULTS))
    check("allure 3 categories page: ours, none of the defaults",
          all(name in seen["categories"] for name in shown) and not any(d in seen["categories"] for d in DEFAULTS), ", ".join(shown))
    arm = seen["arm"]
    check(f"allure 3: {ARM_HOST}'s environment chosen shows its facts and tree only",
          f"Environment:\n{ARM_HOST}" in arm and "Variables" in arm and "aarch64" in arm
          and 'Environment: "' not in arm and "kvm_page_table_test" in arm, arm[:160].replace("\n", " | "))


def check_allure3(ctx: Context, allure3: Path) -> dict[str, Any]:
    """Allure 3 from ``ctx.results`` and its ``allurerc.mjs``: the data, then the pages."""
    check = ctx.check
    report3 = ctx.out / "report3"
    shutil.rmtree(report3, ignore_errors=True)
    config = ctx.results / CONFIG_FILE
    check("allurerc.mjs beside the results", config.is_file())
    t = time.monotonic()
    proc = run([allure3, "generate", "--config", config, "-o", report3, ctx.results])
    ctx.timings["allure 3 generate"] = time.monotonic() - t
    version = (proc.stdout + proc.stderr).strip()
    check("allure 3 generate with the plugin's allurerc.mjs", proc.returncode == 0 and (report3 / "index.html").is_file(),
          proc.stderr.strip()[-300:])
    summary: dict[str, Any] = {"version": run([allure3, "--version"]).stdout.strip() or version[-80:], "report": str(report3)}
    if proc.returncode != 0:
        return summary
    data = check_data(ctx, report3)
    summary.update(data)
    check_pages(ctx, report3, data["categories"], data["environments"])
    return summary
