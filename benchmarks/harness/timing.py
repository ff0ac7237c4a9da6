"""The one timing helper: interleaved repetitions (A B C A B C ...), warm-up rounds untimed and kept
apart, medians and spreads. Methods compared with each other are timed in one run so that they see the
same load; no test asserts a timing."""

from __future__ import annotations

import resource
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any


class Timings(dict):
    """``{method: [seconds of each timed round]}``, with ``warmup`` (the untimed rounds' seconds, measured
    anyway: a first pass builds kernels and maps memory) and ``last`` (each method's last return value)."""

    warmup: dict[str, list[float]]
    last: dict[str, Any]


def interleave(
    methods: Mapping[str, Callable[[], Any]], rounds: int, warmup: int = 1, sync: Callable[[], None] | None = None,
    *, on_round: Callable[[int, str, float], None] | None = None,
) -> Timings:
    """Run every method once per round, in the mapping's order (A B C A B C ...): ``warmup`` rounds first
    (reported in ``.warmup``, not in the result), then ``rounds`` timed ones. ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs before the clock starts and before it stops. ``on_round(round, name,
    seconds)`` is called after each timed call (progress lines)."""
    sync = sync or (lambda: None)
    out = Timings({name: [] for name in methods})
    out.warmup = {name: [] for name in methods}
    out.last = {}
    for r in range(warmup + rounds):
        for name, fn in methods.items():
            sync()
            start = time.perf_counter()
            out.last[name] = fn()
            sync()
            seconds = time.perf_counter() - start
            if r < warmup:
                out.warmup[name].append(seconds)
            else:
                out[name].append(seconds)
                if on_round is not None:
                    on_round(r - warmup, name, seconds)
    return out


def best_time(fn: Callable[[], Any], reps: int, warm: int = 1, sync: Callable[[], None] | None = None) -> float:
    """Best of ``reps`` synchronised wall times of ``fn()`` after ``warm`` untimed calls (a device rate:
    the best run is the one least disturbed)."""
    return min(interleave({"fn": fn}, reps, warm, sync)["fn"])


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how far repeated measurements of one quantity disagreed."""
    m = median(values)
    return (max(values) - min(values)) / m if m else float("nan")


def fmt_spread(values: Sequence[float]) -> str:
    return f"±{100 * spread(values) / 2:.0f} %" if len(values) > 1 else "1 run"


def per_round_ratios(timings: Mapping[str, Sequence[float]], a: str, b: str) -> list[float]:
    """``b``'s seconds over ``a``'s, round by round (a round's methods ran back to back, under similar load):
    how many times faster ``a`` was."""
    return [tb / ta for ta, tb in zip(timings[a], timings[b])]


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads): on a machine shared with other
    jobs, wall time follows their load while CPU time mostly does not."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def workers_cpu_seconds(client: Any) -> float:
    """:func:`cpu_seconds` of every worker process of ``client``'s cluster, summed."""
    return float(sum(client.run(cpu_seconds).values()))


def peak_rss_mib() -> float:
    """This process's peak resident set size over its lifetime (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")
