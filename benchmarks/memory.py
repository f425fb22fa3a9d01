"""Timing and peak-memory measurement of one call (standard library only).

Used by :mod:`benchmarks.worker` and by ``benchmarks/peers/ants_syn.py`` (which runs in
ANTsPy's own environment), so it must not import torch or the package.

Why not ``tracemalloc``: it sees only Python's allocator, not torch/ITK/ANTs native buffers.
Peak memory of a call is therefore measured on the resident set size (RSS) of the process
as ``max(sampled peak, ru_maxrss) - RSS before the call``:

* a background thread reads ``/proc/self/statm`` every ``interval`` seconds, which catches the
  peak of a call even when an earlier, larger allocation already set the process high-water
  mark. The read must stay cheap: sampling with psutil, which also walked the process's
  children, made vxm_prob's ~0.7 s call 13-28% slower on this 2-core machine (its thread holds
  the GIL the calling thread needs between torch operations); reading ``statm`` costs nothing
  measurable (2026-11-21, 8 interleaved calls each). Methods running in a child process (ANTs)
  measure themselves there;
* ``resource.getrusage(...).ru_maxrss`` (the kernel's exact high-water mark) is used when it
  grew during the call, so short spikes between samples are not missed.

Every (method, case) runs in a fresh process, so memory cached by allocators from earlier
calls does not hide the call's own needs.
"""

from __future__ import annotations

import os
import resource
import threading
import time

__all__ = ["rss_mb", "maxrss_mb", "measure"]

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def rss_mb() -> float:
    """Resident set size of this process in MB (2**20 bytes), from ``/proc/self/statm``."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE_MB


def maxrss_mb() -> float:
    """Kernel high-water mark of this process's RSS in MB (Linux ``ru_maxrss`` is in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Sampler(threading.Thread):
    def __init__(self, interval: float):
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop_event = interval, rss_mb(), threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_mb())
            self._stop_event.wait(self.interval)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return max(self.peak, rss_mb())


def measure(fn, *args, interval: float = 0.01, **kwargs):
    """Call ``fn(*args, **kwargs)`` and measure it.

    Returns:
        ``(result, seconds, peak_mb)``: wall-clock seconds (``time.perf_counter``) and the
        extra memory the call needed at its peak, in MB (see the module docstring).
    """
    before, high_water = rss_mb(), maxrss_mb()
    sampler = _Sampler(interval)
    sampler.start()
    start = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    finally:
        seconds = time.perf_counter() - start
        peak = sampler.stop()
    after_high_water = maxrss_mb()
    if after_high_water > high_water:
        peak = max(peak, after_high_water)
    return result, seconds, max(peak - before, 0.0)
