"""The kvmmm lab (``kvmmm-lab``): emulated KVM hosts (QEMU TCG) as pytest-xdist gateways.

- ``hosts``: the host kinds, as data (arch, QEMU machine and CPU, kernel, modules, facts);
- ``recipe``: what an image is made of (pure); ``image``: the userspace and selftests parts;
  ``debian``: Debian's tools, archives and kernels; ``kbuild``: kernels built to order;
  ``build``: ``kvmmm-lab build``, one image record per host kind;
- ``cpio``: the initramfs format; ``overlay``: the per-boot part (/init, server, the installed
  plugin, the user's rootdir);
- ``qemu``: QEMU's command line, ports, boot, readiness, shutdown by pid;
- ``table``: the entry x host table of a run; ``cli``: the ``kvmmm-lab`` command;
- ``guest/``: the files that run inside a lab host; ``kconfig/``: configuration fragments.
"""
