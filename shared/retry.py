"""Retrying work that touches money: back off and try again, never skip.

A consumer that fails to apply a batch (database down, deadlock, a replica racing it
during a rebalance) retries the whole transaction with capped exponential backoff. The
partition waits, loudly, rather than moving past a message it did not apply.
"""

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

log = logging.getLogger(__name__)

T = TypeVar("T")


def _log_attempt(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning(
        "attempt %d of %s failed (%s: %s); retrying",
        state.attempt_number,
        getattr(state.fn, "__qualname__", "operation"),
        type(error).__name__,
        error,
    )


def backoff_s(failures: int, *, first_s: float = 0.05, max_s: float = 5.0) -> float:
    """How long to wait after the `failures`-th failure in a row: doubling from `first_s`,
    capped at `max_s`, with jitter so replicas stuck on one cause do not retry in step."""
    exponent = min(max(failures, 1) - 1, 32)  # 2**32 * first_s is past any cap
    return min(max_s, first_s * 2.0**exponent) * random.uniform(0.5, 1.0)


async def until_done(
    operation: Callable[[], Awaitable[T]],
    *,
    retry_if: Callable[[BaseException], bool] = lambda _: True,
    max_wait_s: float = 5.0,
    on_retry: Callable[[BaseException], object] = lambda _: None,
) -> T:
    """Run `operation` until it succeeds or fails in a way `retry_if` refuses to retry.

    `on_retry` hears of each failure that will be retried (for metrics). Cancellation
    (shutdown) always stops it.
    """

    def before_sleep(state: RetryCallState) -> None:
        _log_attempt(state)
        if state.outcome is not None and (error := state.outcome.exception()) is not None:
            on_retry(error)

    def retryable(error: BaseException) -> bool:
        # tenacity catches BaseException: without this a cancelled batch (a shutdown, a
        # rebalance) would be retried forever and the task would never end.
        return isinstance(error, Exception) and retry_if(error)

    async for attempt in AsyncRetrying(
        retry=retry_if_exception(retryable),
        wait=wait_exponential_jitter(multiplier=0.05, max=max_wait_s),
        before_sleep=before_sleep,
        reraise=True,
    ):
        with attempt:
            return await operation()
    raise AssertionError("unreachable: AsyncRetrying without stop retries until success")


async def every(
    tick: Callable[[], Awaitable[object]],
    *,
    interval_s: float,
    what: str,
    failed: Callable[[], object] | None = None,
) -> None:
    """Run `tick`, sleep `interval_s`, and again, until cancelled.

    A background sampler (metrics read from Kafka or the database) must outlive an
    outage: a failure is logged in one line (`<what>: <error>`), `failed` is called, and
    the next tick tries again.
    """
    while True:
        try:
            await tick()
        except Exception as error:
            if failed is not None:
                failed()
            log.warning("%s (%s: %s)", what, type(error).__name__, error)
        await asyncio.sleep(interval_s)


async def drain_forever(
    step: Callable[[], Awaitable[int]], *, interval_s: float, what: str
) -> None:
    """Run `step` until it returns 0, sleep `interval_s`, and again, until cancelled.

    A background loop (reconciling what is in doubt) must outlive a provider or
    database outage: a failure is logged and the loop goes on after the pause.
    """
    while True:
        try:
            while await step():
                pass
        except Exception:
            log.exception("%s failed; retrying", what)
        await asyncio.sleep(interval_s)
