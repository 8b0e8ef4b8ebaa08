"""A service process freezes what its start-up built, so garbage collections stop
walking it (shared/runtime.py, `settle_heap`; docs/operations.md, "Garbage collection")."""

import gc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
import uvicorn
from starlette.applications import Starlette

from shared import runtime


def _server(lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]]) -> uvicorn.Server:
    """The services' uvicorn server around an app with this lifespan, not yet started."""
    config = uvicorn.Config(
        Starlette(lifespan=lifespan), host="127.0.0.1", port=0, log_config=None, lifespan="on"
    )
    config.load()
    server = runtime._Server(config, None)
    server.lifespan = config.lifespan_class(config)
    return server


@pytest.fixture
def collector_restored() -> Iterator[None]:
    """Leave the test process's collector as it was found."""
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("collector_restored")
def test_settling_freezes_the_heap_and_collects_the_young_generation_less_often() -> None:
    gc.unfreeze()
    built_at_start: list[list[int]] = [[] for _ in range(1000)]  # tracked containers
    _, middle, old = gc.get_threshold()

    runtime.settle_heap()

    assert gc.get_freeze_count() >= len(built_at_start)
    assert gc.get_threshold() == (runtime.GC_YOUNG_THRESHOLD, middle, old)
    # What start-up built is no longer walked: a full collection sees only later objects.
    assert len(gc.get_objects(generation=2)) < gc.get_freeze_count()


@pytest.mark.usefixtures("collector_restored")
async def test_the_server_settles_the_heap_once_the_service_has_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    monkeypatch.setattr(runtime, "settle_heap", lambda: events.append("settled"))

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        events.append("started")
        yield

    server = _server(lifespan)
    await server.startup()
    try:
        assert events == ["started", "settled"]
    finally:
        await server.shutdown()


@pytest.mark.usefixtures("collector_restored")
async def test_a_service_that_failed_to_start_is_not_settled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settled: list[bool] = []
    monkeypatch.setattr(runtime, "settle_heap", lambda: settled.append(True))

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("the database is not there")
        yield

    server = _server(lifespan)
    with pytest.raises(SystemExit):
        await server.startup()
    assert settled == []
