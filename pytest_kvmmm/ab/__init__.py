"""``kvmmm-ab``: a patched KVM measured against the stock one on the same host, in interleaved rounds.

``modules.py`` swaps the KVM modules of a live host (journalled, always restored), ``rounds.py``
runs the selection under each build in alternating order, ``paired.py`` gives verdicts over the
rounds' paired changes, ``table.py`` prints them as a cover letter wants them, and ``cli.py`` is the
command. The modules themselves are built by ``provision/kvm_modules.py``.
"""
