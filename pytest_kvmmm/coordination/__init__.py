"""What a run's processes share on a host, and doing that safely as root: the xdist run
directory, hugetlb ledger and perf lock, the journal of host changes (module reloads
included), process liveness, signals that end a run as Ctrl-C does, files written without
following links, and test ids that are the same on every host."""
