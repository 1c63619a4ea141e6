"""pytest-kvmmm: the kernel's KVM memory-management selftests as a hardware-aware pytest suite."""

from importlib.metadata import PackageNotFoundError, version

try:
    #: One source for the version: pyproject.toml, as installed (pytest's header and every CLI's --version).
    __version__ = version("pytest-kvmmm")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
