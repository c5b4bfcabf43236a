"""Operators' tools behind the ``cove`` command: events, replay, verify, dead letters, consumers, services.

The command line (``cli.py``, built on cliff like the ``openstack`` client) is a thin layer; what it does lives
in one module per subject (``events.py``, ``replay.py``, ``verify.py``, ``dlq.py``, ``status.py``) so that tests
and benchmarks call the same code.
"""
