"""The wallet's use cases, one module each on the ledger base (ledger.py), put together
for the handlers (handlers.py) and the HTTP routes (api.py)."""

from collections.abc import Callable
from datetime import datetime

from services.wallet.gifts import GiftDebitService
from services.wallet.holds import PayoutHoldService
from services.wallet.ledger import Bookkeeper
from services.wallet.limits import SpendingLimitService
from services.wallet.purchases import PurchaseService
from services.wallet.reads import ReadService
from shared.contracts import utc_now
from shared.db import Database


class WalletService:
    """`shards`: the partitions of the wallet's input topics (TOPIC_PARTITIONS), one
    platform shard each; `clock` decides which UTC day, week and month a gift counts in."""

    def __init__(
        self, db: Database, clock: Callable[[], datetime] = utc_now, *, shards: int
    ) -> None:
        books = Bookkeeper(shards=shards)
        self.purchases = PurchaseService(db, books)
        self.gifts = GiftDebitService(db, books, clock)
        self.holds = PayoutHoldService(db, books)
        self.limits = SpendingLimitService(db)
        self.reads = ReadService(db)
