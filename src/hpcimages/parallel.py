"""Work items run a few at once, in threads, with one way to stop: what `invoke check --jobs` and
`invoke convert --jobs` share.

Both mostly wait on containers, so threads suffice. A Ctrl-C reaches the main thread while it waits on the results:
the items not started are cancelled, ``stop`` is called once and then every second until every started one has
returned (it kills their containers; a container started after one call is killed by the next), and the
KeyboardInterrupt is raised.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

#: how long a Ctrl-C waits for the items in flight to return after their containers were killed
STOP_WITHIN_S = 60.0


def run_numbered(work: Callable[[int, Item], Result], items: Sequence[Item], jobs: int, stop: Callable[[], None],
                 name: str = "work") -> list[Result]:
    """``work(i, item)`` for each item (``i`` from 1), up to ``jobs`` at once, the results in the items' order;
    one after the other in this thread where ``jobs`` is 1 or less."""
    if jobs <= 1:
        return [work(i, item) for i, item in enumerate(items, 1)]
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix=name)
    futures = []
    try:  # a Ctrl-C while the items are submitted stops the ones already started too
        futures.extend(pool.submit(work, i, item) for i, item in enumerate(items, 1))
        return [f.result() for f in futures]
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        # the workers end once their item returns (a future of one started just now may not be in the list yet)
        ended = threading.Event()
        threading.Thread(target=lambda: (pool.shutdown(wait=True), ended.set()), daemon=True).start()
        deadline = time.monotonic() + STOP_WITHIN_S
        stop()
        while not ended.wait(1) and time.monotonic() < deadline:
            stop()
        raise
    finally:
        pool.shutdown(wait=False)
