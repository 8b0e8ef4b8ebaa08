"""Gift rules. The gift saga arrives with the gifting issue; for now, the catalog."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Gift:
    gift_id: str
    name: str
    coins: int
