"""shared/broker.py FetchPacing: fetches held for more records while records come,
aiokafka's defaults once they stop."""

import asyncio
from types import SimpleNamespace

import aiokafka.consumer.fetcher

from shared.broker import IDLE_FETCH_MAX_WAIT_MS, IDLE_FETCH_MIN_BYTES, FetchPacing
from shared.settings import ServiceSettings

BUSY = (16384, 10)
IDLE = (IDLE_FETCH_MIN_BYTES, IDLE_FETCH_MAX_WAIT_MS)


def consumer() -> SimpleNamespace:
    """An aiokafka consumer as FetchPacing sees it: the fetcher's two request settings."""
    return SimpleNamespace(_fetcher=SimpleNamespace(_fetch_min_bytes=1, _fetch_max_wait_ms=500))


def pacing_of(c: SimpleNamespace) -> tuple[int, int]:
    return c._fetcher._fetch_min_bytes, c._fetcher._fetch_max_wait_ms


def test_the_defaults_are_the_busy_pacing_and_idle_is_aiokafkas_own() -> None:
    settings = ServiceSettings.model_construct()
    assert (settings.consumer_fetch_min_bytes, settings.consumer_fetch_max_wait_ms) == BUSY
    assert IDLE == (1, 500)


def test_aiokafkas_fetcher_still_builds_requests_from_the_attributes_set() -> None:
    """FetchPacing sets private attributes: this fails when a new aiokafka renames them."""
    source = aiokafka.consumer.fetcher.Fetcher._get_actions_per_node.__code__.co_names
    assert "_fetch_min_bytes" in source and "_fetch_max_wait_ms" in source


async def test_busy_while_records_come_idle_once_they_stop() -> None:
    settings = ServiceSettings.model_construct()
    pacing, c = FetchPacing(settings, idle_after_s=0.2), consumer()
    assert not pacing.busy and pacing_of(c) == IDLE

    pacing.records_came(c)
    assert pacing.busy and pacing_of(c) == BUSY
    for _ in range(4):  # records keep coming: 0.4 s in all, never 0.2 s quiet
        await asyncio.sleep(0.1)
        pacing.records_came(c)
        assert pacing_of(c) == BUSY

    await asyncio.sleep(0.35)
    assert not pacing.busy and pacing_of(c) == IDLE

    pacing.records_came(c)  # the first batch after a quiet spell puts it back to work
    assert pacing_of(c) == BUSY
    pacing.stop()
    assert not pacing.busy


async def test_a_consumer_without_a_fetcher_is_left_alone() -> None:
    pacing = FetchPacing(ServiceSettings.model_construct(), idle_after_s=0.05)
    pacing.records_came(SimpleNamespace(_fetcher=None))
    await asyncio.sleep(0.1)
    assert not pacing.busy


async def test_a_consumer_started_again_is_paced_from_its_first_batch() -> None:
    """A new aiokafka fetcher (the consumer was stopped and started) gets the busy pacing
    at once, not after the next quiet second."""
    pacing, first, second = FetchPacing(ServiceSettings.model_construct()), consumer(), consumer()
    pacing.records_came(first)
    pacing.records_came(second)
    assert pacing_of(first) == BUSY and pacing_of(second) == BUSY
    pacing.stop()
