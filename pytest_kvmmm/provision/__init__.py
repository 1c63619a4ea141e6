"""Building the KVM selftests from a kernel source into a per-version cache (``kvmmm-build``)."""
