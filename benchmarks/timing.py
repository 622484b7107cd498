"""Interleaved (round-robin) timing of several alternatives, and the machine's sgemm peak."""
from __future__ import annotations

import random
import statistics
import time

import torch


def time_once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def interleaved(runners: dict, budget_s: float = 3.0, min_reps: int = 7, max_reps: int = 50,
                warmup: int = 2, seed: int = 0) -> dict[str, list[float]]:
    """ms per call for each runner.  After warm-up, every repetition calls each runner once, in a
    freshly shuffled order (seeded), so machine noise lands on all alternatives alike and each one
    follows every other about equally often.  (A rotated fixed order is not enough: rotation keeps
    the cyclic order, so one alternative always ran right after PyTorch and paid for its threads
    and cache traffic -- measured here: up to 1.6x on sub-5 ms points.)  The number of
    repetitions fits ``budget_s`` within [min_reps, max_reps]."""
    names = list(runners)
    if not names:
        return {}
    round_ms = 0.0
    for name in names:
        for _ in range(warmup - 1):
            runners[name]()
        round_ms += time_once(runners[name])
    reps = max(min_reps, min(max_reps, int(budget_s * 1e3 / max(round_ms, 1e-3))))
    samples = {n: [] for n in names}
    order = list(names)
    rng = random.Random(seed)
    for _ in range(reps):
        rng.shuffle(order)
        for name in order:
            samples[name].append(time_once(runners[name]))
    return samples


def summary(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0]] * 3
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "p25_ms": q[0], "p75_ms": q[2],
            "reps": len(ms)}


def sgemm_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best of ``repeats`` torch.mm of two n×n fp32 matrices on ``threads`` threads (MKL/oneDNN
    sgemm): the practical fp32 peak that GFLOP/s figures are compared with."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)
    best = min(time_once(lambda: torch.mm(a, b, out=c)) for _ in range(repeats))
    return 2 * n ** 3 / (best * 1e-3) / 1e9
