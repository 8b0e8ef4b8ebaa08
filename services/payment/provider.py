"""The card provider interface and the built-in simulated provider of CONTRACT.md."""

import asyncio
from dataclasses import dataclass
from typing import Literal, Protocol

from shared.money import Money

Outcome = Literal["approved", "declined"]


@dataclass(frozen=True)
class Charge:
    outcome: Outcome
    provider_reference: str


class CardProvider(Protocol):
    async def charge(self, *, idempotency_key: str, method: str, amount: Money) -> Charge:
        """Charge once per idempotency key: a repeated key returns the first result."""
        ...


class SimulatedProvider:
    """`pm_card_ok` is approved, anything else declined; results are kept per key."""

    def __init__(self, *, latency_ms: int = 0) -> None:
        self._latency_s = latency_ms / 1000
        self._charges: dict[str, Charge] = {}

    async def charge(self, *, idempotency_key: str, method: str, amount: Money) -> Charge:
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        if idempotency_key not in self._charges:
            outcome: Outcome = "approved" if method == "pm_card_ok" else "declined"
            self._charges[idempotency_key] = Charge(outcome, f"sim_{idempotency_key}")
        return self._charges[idempotency_key]
