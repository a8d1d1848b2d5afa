"""Latency summaries and CPU accounting for the benchmark (standard library only).

Latencies are kept as plain lists of seconds and summarised with exact nearest-rank
percentiles: a run has at most a few hundred thousand samples, so sorting them is cheaper
and simpler than an HDR histogram and loses nothing.

CPU is read from /proc: utime+stime of every live process of a group plus the cutime+cstime
of the group's root (what its exited children used, e.g. PostgreSQL backends that closed
during the phase). Deltas over a phase divided by its wall time give "cores used".
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Summary:
    n: int
    min: float
    avg: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Summary:
        values = sorted(seconds)
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
        ms = [v * 1000 for v in values]
        return cls(len(ms), ms[0], sum(ms) / len(ms), percentile(ms, 50), percentile(ms, 90),
                   percentile(ms, 99), ms[-1])

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 2) if isinstance(v, float) and not math.isnan(v) else v
                for k, v in self.__dict__.items()}


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def fmt_ms(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


# --- CPU --------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(comm, ppid, own ticks, reaped children's ticks) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode(errors="replace")
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2:].split()
    # rest[0] is field 3 (state): ppid=4, utime=14, stime=15, cutime=16, cstime=17.
    return comm, int(rest[1]), int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14])


def _process_table() -> dict[int, tuple[str, int, int, int]]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _stat(int(entry))
            if found is not None:
                table[int(entry)] = found
    return table


def _tree_ticks(table: dict[int, tuple[str, int, int, int]], root: int) -> int:
    if root not in table:
        return 0
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = table[root][3], [root]  # the root's reaped children count too
    while stack:
        pid = stack.pop()
        total += table[pid][2]
        stack.extend(children.get(pid, ()))
    return total


def find_roots(comm: str) -> list[int]:
    """Processes named `comm` whose parent is not: the postmaster, redis-server."""
    table = _process_table()
    return [pid for pid, (name, ppid, _, _) in table.items()
            if name == comm and table.get(ppid, ("",))[0] != comm]


def _machine_busy_ticks() -> tuple[int, int]:
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle, sum(fields[:8])


class CpuMeter:
    """Cores used per process group over a phase: `start()`, run the phase, `stop()`.

    `trees` are counted with all their descendants (and the root's reaped children);
    `explicit` pid sets (PostgreSQL backends of one database, say) are given at start and
    at stop and counted pid by pid: a pid that exits during the phase is not counted."""

    def __init__(self, trees: dict[str, list[int]]) -> None:
        self.trees = trees
        self._t0 = 0.0
        self._start: dict[str, float] = {}
        self._explicit0: dict[int, int] = {}

    def _sample(self) -> dict[str, float]:
        table = _process_table()
        sample = {name: sum(_tree_ticks(table, root) for root in roots) / CLOCK_TICKS
                  for name, roots in self.trees.items()}
        own = os.times()
        sample["bench client"] = own.user + own.system
        busy, _ = _machine_busy_ticks()
        sample["machine"] = busy / CLOCK_TICKS
        return sample

    def start(self, explicit: dict[str, set[int]] | None = None) -> None:
        self._explicit0 = {pid: ticks for pids in (explicit or {}).values() for pid in pids
                           if (ticks := _own_ticks(pid)) is not None}
        self._t0 = time.perf_counter()
        self._start = self._sample()

    def stop(self, explicit: dict[str, set[int]] | None = None) -> dict[str, float]:
        wall = time.perf_counter() - self._t0
        now = self._sample()
        used = {name: (now[name] - self._start[name]) / wall for name in now}
        for name, pids in (explicit or {}).items():
            ticks = 0
            for pid in pids | (self._explicit0.keys() & pids):
                current = _own_ticks(pid)
                if current is not None:
                    ticks += current - self._explicit0.get(pid, 0)
            used[name] = ticks / CLOCK_TICKS / wall
        accounted = sum(v for k, v in used.items() if k != "machine")
        used["other"] = max(0.0, used["machine"] - accounted)
        used["wall"] = wall
        return used


def _own_ticks(pid: int) -> int | None:
    found = _stat(pid)
    return None if found is None else found[2]
