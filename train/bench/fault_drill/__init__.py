"""Fault drill: the faults of a long multi-host run, injected, and what survives them.

Run ``python -m train.bench.fault_drill``. Each scenario trains the tiny LLaMA with
``python -m train`` in child processes (one, or two of 4 CPU devices each joined over
localhost), injects one fault (a signal from outside, or one of the trainer's fault
hooks, ``train.loop.Hooks``, in the child), recovers the way a user would (``--resume``),
and checks the run against an uninterrupted one with as many processes: every step's
loss and batch fingerprint (CRC32 of the global batch) and the final validation loss
identical, so no update and no sample was lost, skipped or repeated. Bad inputs are tried
in-process: each must end in a one-line error. Prints and saves
``train/bench/results/fault_drill.md``; ``tests/test_fault_drill.py`` runs the scenarios.

Modules: ``faults`` (the child's injected faults), ``runs`` (launching and checking
runs), ``single`` and ``multi`` (the scenarios of one and of two processes),
``bad_inputs``, and ``__main__`` (all of them, and the table).
"""
