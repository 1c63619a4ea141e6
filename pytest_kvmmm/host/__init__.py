"""The host model: what this machine can run, probed from a root directory (``/`` or a snapshot)."""

from .model import HostFacts, HugetlbPool, ThpFacts
from .probe import probe_host

__all__ = ["HostFacts", "HugetlbPool", "ThpFacts", "probe_host"]
