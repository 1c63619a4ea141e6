"""The host model: what this machine can run, probed from a root directory (``/`` or a snapshot)."""

from .mm import HugetlbPool, ThpFacts
from .model import HostFacts
from .probe import probe_host

__all__ = ["HostFacts", "HugetlbPool", "ThpFacts", "probe_host"]
