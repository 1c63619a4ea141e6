"""pytest-kvmmm: the kernel's KVM memory-management selftests as a hardware-aware pytest suite."""

__version__ = "0.1.0"
