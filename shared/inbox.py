"""The inbox: which messages a service has already applied.

Claims are written in the same transaction as the state change they guard, so either
both commit or neither does; a redelivered message then finds its id taken.
"""

from collections.abc import Iterable

from shared.db import Connection


async def claim_many(conn: Connection, *, topic: str, message_ids: Iterable[str]) -> set[str]:
    """Claim message ids for this transaction; returns those not seen before."""
    ids = list(dict.fromkeys(message_ids))
    if not ids:
        return set()
    rows = await conn.fetch(
        """
        INSERT INTO inbox (message_id, topic)
        SELECT id, $2 FROM unnest($1::text[]) AS t(id)
        ON CONFLICT (topic, message_id) DO NOTHING
        RETURNING message_id
        """,
        ids,
        topic,
    )
    return {row["message_id"] for row in rows}
