"""xdist's hooks, registered only when xdist distributes the session (on the controller).

Local workers get the controller's host probe through ``workerinput``; a ``--dist each``
run stops when a host collected other tests than the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from ..coordination import gateways, testids
from ..coordination.rundir import run_dir_problem
from . import dashboards
from .options import SNAPSHOT_ENV

if TYPE_CHECKING:
    from .session import KvmmmPlugin

#: The key of the controller's host probe in a local worker's ``workerinput``.
WORKERINPUT_HOST = "kvmmm_host"
#: The key of what a worker restored (and whether it used the host) in its ``workeroutput``.
WORKEROUTPUT = "kvmmm_host_changes"


def distributing(config: pytest.Config) -> bool:
    """Whether this process is an xdist controller that starts workers (xdist's own test)."""
    option = config.option
    return not hasattr(config, "workerinput") and getattr(option, "dist", "no") != "no" and bool(getattr(option, "tx", None))


def tune(config: pytest.Config) -> None:
    if getattr(config.option, "maxschedchunk", "") is None:
        # Selftests take seconds each: xdist's initial chunks would pile long tests on one
        # worker. One test at a time balances them (ci/bench_xdist.py; the README has the numbers).
        config.option.maxschedchunk = 1


def handed_host(config: pytest.Config, source: str) -> dict[str, Any] | None:
    """On a worker: the controller's probe, when it looked at the same host source."""
    handed = getattr(config, "workerinput", {}).get(WORKERINPUT_HOST)
    if handed is not None and handed.get("source") == source:
        facts: dict[str, Any] = handed["facts"]
        return facts
    return None


class XdistHooks:
    """The controller's side of a distributed session."""

    def __init__(self, config: pytest.Config, session: KvmmmPlugin) -> None:
        self.config = config
        self.session = session
        self._collections: dict[str, list[str]] = {}

    @pytest.hookimpl(optionalhook=True)  # xdist's hook: only called when xdist runs the session
    def pytest_configure_node(self, node: Any) -> None:
        """Hand the probe to workers on this machine that look at the same host (no snapshot of
        their own in the gateway's environment); ssh/socket workers probe their own host."""
        spec = node.gateway.spec
        self.session.testrunuid = str(node.workerinput.get("testrunuid") or "")
        if spec.popen and not spec.via:  # this machine's run directory: someone else's stops the run now
            source = self.config.getoption("kvm_host_snapshot") or (spec.env or {}).get(SNAPSHOT_ENV) or self.session.settings.host_source
            problem = run_dir_problem(self.session.testrunuid, str(source))
            if problem:
                pytest.exit(f"kvmmm: xdist run directory: {problem}", returncode=pytest.ExitCode.USAGE_ERROR)
        self.session.signals.install()  # SIGTERM to the controller ends the run as Ctrl-C does
        node.workerinput[dashboards.WORKERINPUT_ISSUES] = self.session.dash.raw_issues  # lab hosts may lack the file
        if not self.session.probed:
            return  # not probed (no --kvm-* option): the first worker that needs the host probes it
        if spec.popen and not spec.via and SNAPSHOT_ENV not in (spec.env or {}):
            node.workerinput[WORKERINPUT_HOST] = {
                "source": self.session.settings.host_source, "facts": self.session.host().to_json()
            }

    @pytest.hookimpl(optionalhook=True)  # xdist's hook, on the controller
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        """A worker ended: keep what it restored for the summary. One that crashed may have left
        host changes: the controller restores them at the end of the run."""
        done = getattr(node, "workeroutput", None) or {}
        mine = done.get(WORKEROUTPUT) or {}
        session = self.session
        session.workers_used_host = session.workers_used_host or bool(error) or bool(mine.get("active"))
        session.restored_at_end += [f"{line} [by worker {node.gateway.id}]" for line in mine.get("restored", [])]
        session.host_changes.ignored += [r for r in mine.get("ignored", []) if r not in session.host_changes.ignored]
        if error:
            self._lost_host(node, error)

    def _lost_host(self, node: Any, error: object) -> None:
        """A socket gateway's worker died and nothing listens there any more (a lab host whose
        guest panicked): say so in one line and keep xdist from replacing the worker, whose
        connect would end the whole run in an INTERNALERROR. The other hosts finish what they
        were sent; this host's remaining tests are not run (its test that was running fails)."""
        address = gateways.socket_address(node.gateway.spec)
        why = gateways.unreachable(address) if address is not None else None
        if why is None:
            return  # a live host, or not a socket gateway: xdist replaces the worker as usual
        dsession = self.config.pluginmanager.getplugin("dsession")
        if dsession is not None and hasattr(dsession, "_max_worker_restart"):
            # xdist's only switch (its DSession checks it right after this hook): this crash
            # counts as the last one allowed.
            dsession._max_worker_restart = getattr(dsession, "_failed_nodes_count", 0)
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        host = f"{address[0]}:{address[1]}" if address else "?"
        line = (f"kvmmm: host of gateway {node.gateway.id} (socket={host}) went down ({str(error).strip()[:120]}) "
                f"and does not answer ({why}): its remaining tests are not run; the other hosts go on")
        if reporter is not None:
            reporter.write_line(line, red=True, bold=True)

    @pytest.hookimpl(optionalhook=True)  # xdist's hook, on the controller
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """``--dist each`` runs whatever each worker collected without comparing: stop the run
        (after what was already sent) when a host collected other tests than the rest."""
        spec = str(getattr(node.gateway.spec, "_spec", node.gateway.spec)).replace("execmodel=main_thread_only//", "")
        self._collections[f"{node.gateway.id} ({spec})"] = list(ids)
        problem = testids.collection_problem(self._collections)
        dsession = self.config.pluginmanager.getplugin("dsession")
        if problem and dsession is not None and not getattr(dsession, "shouldstop", True):
            dsession.shouldstop = problem
