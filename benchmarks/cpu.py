"""CPU time per process group during a benchmark scenario, read from /proc (Linux): where each request's CPU goes.

A group is a name and the root pids whose whole process trees count toward it (PostgreSQL's backends are
children of its postmaster)."""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return parents


def _tree(root: int, parents: dict[int, int]) -> set[int]:
    pids, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in pids and pid not in pids:
                pids.add(pid)
                grew = True
    return pids


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, plus what its reaped children used."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return sum(int(f) for f in fields[11:15]) / _TICK


def snapshot(groups: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds used so far by each group's process trees."""
    parents = _parents()
    out: dict[str, float] = {}
    for name, roots in groups.items():
        pids: set[int] = set()
        for root in roots:
            pids |= _tree(root, parents)
        out[name] = sum(_cpu_seconds(pid) for pid in pids)
    return out


def per_request_ms(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """CPU milliseconds per request of each group between two snapshots (PostgreSQL backends that exited in
    between are counted through their parent's reaped-children times)."""
    n = max(1, requests)
    return {name: round((after[name] - before.get(name, 0.0)) * 1000 / n, 3) for name in after}
