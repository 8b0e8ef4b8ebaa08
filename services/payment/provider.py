"""The card provider interface and the built-in simulated provider of CONTRACT.md."""

import asyncio
from collections import Counter
from dataclasses import dataclass
from typing import Literal, Protocol

from services.payment.errors import ProviderUnavailableError
from shared.money import Money

Outcome = Literal["approved", "declined"]


@dataclass(frozen=True)
class Charge:
    outcome: Outcome
    provider_reference: str


class CardProvider(Protocol):
    async def charge(self, *, idempotency_key: str, method: str, amount: Money) -> Charge:
        """Charge once per idempotency key: a repeated key returns the first result.

        Raises ProviderUnavailableError when the provider cannot be reached; the
        outcome is then unknown and the same key may be tried again.
        """
        ...


class SimulatedProvider:
    """The simulated card network, keyed by idempotency key like a real provider:

    - `pm_card_ok`: approved;
    - `pm_card_declined` (and any unknown method): declined;
    - `pm_card_flaky`: the first attempt charges the card but its answer is lost
      (a timeout); a retry with the same key gets the original approval;
    - `pm_card_down`: unreachable on every attempt.

    It keeps its records in memory, as a provider keeps them on its side — but a restart
    of the payment service forgets them, which a real provider would not: a purchase
    interrupted between charge and settle is then charged again by the simulator (it is
    still completed and credited once).
    """

    def __init__(self, *, latency_ms: int = 0) -> None:
        self._latency_s = latency_ms / 1000
        self._results: dict[str, Charge] = {}
        self.attempts: Counter[str] = Counter()
        self.cards_charged: Counter[str] = Counter()
        """How many times money actually moved per key: at most once, whatever happens."""

    async def charge(self, *, idempotency_key: str, method: str, amount: Money) -> Charge:
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        self.attempts[idempotency_key] += 1
        if method == "pm_card_down":
            raise ProviderUnavailableError("simulated provider: unreachable")
        if idempotency_key not in self._results:
            self._results[idempotency_key] = self._new_charge(idempotency_key, method)
            if method == "pm_card_flaky":
                raise ProviderUnavailableError("simulated provider: timed out after charging")
        return self._results[idempotency_key]

    def _new_charge(self, key: str, method: str) -> Charge:
        if method in ("pm_card_ok", "pm_card_flaky"):
            self.cards_charged[key] += 1
            return Charge("approved", f"sim_ch_{key}")
        return Charge("declined", f"sim_dc_{key}")
