"""The engine: a selftest name and arguments in, a result out. No pytest here.

Finds the binary, checks the host requirements, runs it in a process tree it can end,
classifies its exit and output (parsed in bounded time), parses its metrics, counts KVM
events (``counters/``) and watches the kernel log around it.
"""
