"""shared/retry.until_done: transient failures are retried; cancellation never is."""

import asyncio

import pytest

from shared.retry import until_done


async def test_a_transient_failure_is_retried_until_it_succeeds() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("database restarting")
        return "done"

    assert await until_done(flaky, max_wait_s=0.01) == "done"
    assert calls == 3


async def test_a_refused_failure_is_raised_at_once() -> None:
    async def broken() -> None:
        raise ValueError("the message is at fault")

    with pytest.raises(ValueError):
        await until_done(broken, retry_if=lambda e: not isinstance(e, ValueError))


async def test_cancellation_ends_it_even_when_every_error_is_retryable() -> None:
    """A shutdown cancels the batch in hand: it must end, not be retried forever."""
    started = asyncio.Event()
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(until_done(slow, retry_if=lambda _: True))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await task
    assert calls == 1
