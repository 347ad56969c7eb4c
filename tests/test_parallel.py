"""parallel.run_numbered: the order of the results, how many run at once, and what a Ctrl-C does."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from hpcimages import parallel


def test_results_come_in_the_items_order_and_at_most_jobs_run_at_once():
    running, most, guard = [0], [0], threading.Lock()

    def work(i: int, item: str) -> str:
        with guard:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05 * (4 - i))  # the first items end last
        with guard:
            running[0] -= 1
        return f"{i}:{item}"

    assert parallel.run_numbered(work, ["a", "b", "c"], 2, stop=lambda: None) == ["1:a", "2:b", "3:c"]
    assert most[0] == 2
    assert parallel.run_numbered(work, ["a", "b"], 1, stop=lambda: None) == ["1:a", "2:b"]


def test_a_ctrl_c_stops_the_started_items_until_they_return_and_starts_no_other():
    started, stops, release = [], [], threading.Event()

    def work(i: int, item: str) -> str:
        started.append(item)
        if item == "a":  # the user's Ctrl-C, once the main thread waits on the results
            time.sleep(0.1)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        release.wait(10)  # a container that ends only once it is killed
        return item

    def stop() -> None:
        stops.append(time.monotonic())
        if len(stops) == 2:  # the first kill missed a container started after it; the second one ends it
            release.set()

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            parallel.run_numbered(work, ["a", "b", "c", "d"], 2, stop)
    finally:
        signal.signal(signal.SIGINT, before)
    assert len(stops) >= 2 and release.is_set()
    assert "c" not in started and "d" not in started
