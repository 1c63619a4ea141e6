"""The kvmmm lab (``ci/lab/lab.py``): emulated arm64 KVM hosts as pytest-xdist gateways.

- ``recipe``: what an image is made of (pure); ``image``: building and caching its parts;
- ``cpio``: the initramfs format; ``overlay``: the per-boot part (/init, server, plugin copy);
- ``qemu``: QEMU's command line, ports, boot, readiness, shutdown by pid;
- ``guest/``: the files that run inside a lab host.
"""
