"""Celery with a Redis broker and result backend running the remote benchmark's trivial task:
the round trip of one call awaited at a time, and the throughput of a burst awaited together."""
import statistics
import sys
import time

from tasks import echo

round_trips, burst = int(sys.argv[1]), int(sys.argv[2])
# Warm up: the worker's processes have started and answered.
for n in range(20):
    assert echo.delay(n).get(timeout=60) == n
times = []
for n in range(round_trips):
    start = time.perf_counter()
    assert echo.delay(n).get(timeout=60) == n
    times.append((time.perf_counter() - start) * 1e6)
times.sort()
start = time.perf_counter()
results = [echo.delay(n) for n in range(burst)]
for n, result in enumerate(results):
    assert result.get(timeout=300) == n
rate = burst / (time.perf_counter() - start)
print(f"| Celery (redis broker + backend), trivial task | {statistics.median(times):.1f} µs "
      f"| {times[len(times) * 99 // 100]:.1f} µs | {rate:.0f} tasks/s |")
