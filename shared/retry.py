"""Retrying work that touches money: back off and try again, never skip.

A consumer that fails to apply a batch (database down, deadlock, a replica racing it
during a rebalance) retries the whole transaction with capped exponential backoff. The
partition waits, loudly, rather than moving past a message it did not apply.
"""

import logging
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


async def until_done(
    operation: Callable[[], Awaitable[T]],
    *,
    retry_if: Callable[[BaseException], bool] = lambda _: True,
    max_wait_s: float = 5.0,
) -> T:
    """Run `operation` until it succeeds or fails in a way `retry_if` refuses to retry.

    Cancellation (shutdown) always stops it.
    """
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(retry_if),
        wait=wait_exponential_jitter(multiplier=0.05, max=max_wait_s),
        before_sleep=_log_attempt,
        reraise=True,
    ):
        with attempt:
            return await operation()
    raise AssertionError("unreachable: AsyncRetrying without stop retries until success")
