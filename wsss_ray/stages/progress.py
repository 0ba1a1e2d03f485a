"""Driver-side progress bars for stages that run elsewhere (Ray Train workers, Ray Data actors).

The driver cannot see inside a worker, but it can see what the stage writes: a thread polls a
count (map shards written, a training progress file) and moves a tqdm bar (done/total, rate,
ETA). The bar appears only once a stage has run ``delay_s`` seconds, so short stages stay one
line; ``WSSS_RAY_VERBOSE=1`` (``--verbose``) leaves Ray's own progress output on instead.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator


def verbose() -> bool:
    return os.environ.get("WSSS_RAY_VERBOSE") == "1"


@contextmanager
def watched(desc: str, total: int, count: Callable[[], int], unit: str = "img",
            interval_s: float = 1.0, delay_s: float = 5.0) -> Iterator[None]:
    """Run the body while a bar follows ``count()`` (read every ``interval_s``) up to ``total``."""
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, unit=unit, delay=delay_s, dynamic_ncols=True, mininterval=interval_s)
    stop = threading.Event()

    def follow():
        while not stop.wait(interval_s):
            move(bar, count)

    thread = threading.Thread(target=follow, name=f"progress-{desc}", daemon=True)
    thread.start()
    try:
        yield
        move(bar, count)
    finally:
        stop.set()
        thread.join()
        bar.close()


def move(bar, count: Callable[[], int]) -> None:
    try:
        done = min(int(count()), bar.total)
    except Exception:           # a listing that fails once (a shard being written) is read again next time
        return
    if done > bar.n:
        bar.update(done - bar.n)
