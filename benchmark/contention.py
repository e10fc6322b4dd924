"""How much of the machine a benchmark did not have while it ran: the CPU time the hypervisor gave
to other guests (steal) and the CPU time other processes on this machine used, as shares of all
CPUs over the run. A training run on the other core, or a busy neighbour on the host, slowed the
2026-12-03 benchmarks by 1.5-2.5x with nothing in their own output to show it; these two numbers do.
Read from /proc/stat (Linux); elsewhere they are unknown (None)."""
from __future__ import annotations

import os
from pathlib import Path

NOISY_PCT = 5.0    # above this share of the machine, a timing is not comparable with a quiet run's


def snapshot() -> dict | None:
    """The machine's CPU counters (seconds, summed over CPUs) and this process's own CPU time,
    children it has waited for included (the training layouts run as subprocesses)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (f / tick for f in fields)
    own = os.times()
    return {"total": sum(fields) / tick, "steal": steal,
            "busy": user + nice + system + irq + softirq,
            "own": own.user + own.system + own.children_user + own.children_system}


def contention(before: dict | None, after: dict | None) -> dict:
    """Steal and other processes' CPU time between two snapshots, in % of every CPU's time."""
    if before is None or after is None or after["total"] <= before["total"]:
        return {"steal_pct": None, "other_processes_pct": None, "noisy": None}
    total = after["total"] - before["total"]
    others = max(0.0, (after["busy"] - before["busy"]) - (after["own"] - before["own"]))
    steal_pct, other_pct = 100 * (after["steal"] - before["steal"]) / total, 100 * others / total
    return {"steal_pct": round(steal_pct, 1), "other_processes_pct": round(other_pct, 1),
            "noisy": steal_pct > NOISY_PCT or other_pct > NOISY_PCT}


def describe(c: dict) -> str:
    if c["noisy"] is None:
        return "CPU contention: unknown (no /proc/stat)"
    text = (f"CPU contention during the run: {c['steal_pct']}% stolen by the hypervisor, "
            f"{c['other_processes_pct']}% used by other processes (of all CPUs' time)")
    return text + (f". WARNING: over {NOISY_PCT}%: these timings are not comparable with a quiet run's"
                   if c["noisy"] else "")
