"""request_id is the idempotency key of every request (CONTRACT.md): the same request
sent again has no second effect, and a request_id reused for different content is
refused (dead-lettered as `idempotency_conflict`), never processed."""

from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from shared.errors import PermanentError


class Request(Protocol):
    @property
    def request_id(self) -> str: ...


R = TypeVar("R", bound=Request)


class IdempotencyConflictError(PermanentError):
    """A request reuses a request_id with different content."""

    reason = "idempotency_conflict"


def first_of_each(requests: Iterable[R], fingerprint: Callable[[R], str]) -> list[R]:
    """The first request of each request_id, in order; a repeat must be the same request
    (same fingerprint), else the batch fails and the consumer isolates the conflict."""
    first: dict[str, R] = {}
    for request in requests:
        if first.setdefault(request.request_id, request) is not request:
            refuse_if_different(fingerprint(first[request.request_id]), request, fingerprint)
    return list(first.values())


def refuse_if_different(
    known_fingerprint: str, request: R, fingerprint: Callable[[R], str]
) -> None:
    """Raise IdempotencyConflictError unless `request` is the request recorded before."""
    if known_fingerprint != fingerprint(request):
        raise IdempotencyConflictError(
            f"request_id {request.request_id!r} was used before for a different request"
        )
