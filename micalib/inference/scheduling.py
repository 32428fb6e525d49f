"""Scheduling the CPU work of a pipeline around its network calls: one helper, an injectable pool.

``Schedule(pool, ahead)`` runs a function over inputs and hands the results back in input order:

- no pool: one input after the other, in the calling thread;
- ``ahead > 0``: that many inputs in flight in the pool, also while the caller runs the network
  (prefetching; on a GPU the CPU work then overlaps the network);
- ``ahead == 0``: the inputs that complete the caller's next batch (``wanted()``) at once, all of
  them finished before the first is handed on, so nothing runs in the pool while the caller runs
  a network on the same CPU cores.

``pool`` is any ``concurrent.futures.Executor``: the demo's threads today, worker processes for
decoding (``ProcessPoolExecutor``; the function and its inputs must then be picklable). The bounded
number in flight (``ahead`` or one batch) is the queue to the network.
"""
from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from typing import (
    TypeVar,
)

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["Schedule"]


class Schedule:
    """See the module docstring. ``pool`` None = serial; ``ahead`` inputs kept in flight (0: batch
    by batch, nothing in flight while the caller works)."""

    def __init__(self, pool: Executor | None = None, ahead: int = 0) -> None:
        self.pool = pool
        self.ahead = max(0, int(ahead))

    def imap(self, fn: Callable[..., R], inputs: Iterable[tuple], wanted: Callable[[], int] = lambda: 1
             ) -> Iterator[tuple[tuple, R]]:
        """``(args, fn(*args))`` for every ``args`` of ``inputs``, in order (see the module docstring)."""
        rest = iter(inputs)
        if self.pool is None:
            for args in rest:
                yield args, fn(*args)
            return
        if self.ahead > 0:
            queue: deque = deque()
            while True:
                while len(queue) < self.ahead and (args := next(rest, None)) is not None:
                    queue.append((args, self.pool.submit(fn, *args)))
                if not queue:
                    return
                args, future = queue.popleft()
                yield args, future.result()
        while chunk := list(itertools.islice(rest, max(1, wanted()))):
            futures = [self.pool.submit(fn, *args) for args in chunk]
            results = [f.result() for f in futures]
            yield from zip(chunk, results, strict=True)

    def map_idle(self, fn: Callable[[T], R], inputs: Sequence[T]) -> list[R]:
        """``[fn(x) for x in inputs]``, spread over the pool when it is idle between batches (no
        prefetching); with prefetching the pool is busy preparing, so the calling thread does it."""
        if self.pool is not None and self.ahead == 0:
            return list(self.pool.map(fn, inputs))
        return [fn(x) for x in inputs]
