-- The outbox in shards, so every replica's relay publishes at once (issue 11 item 2).
--
-- A row's shard is a hash of its key modulo outbox_shards(), computed by the database
-- (a stored generated column: no writer can get it wrong). Every event of one key lands
-- in one shard, and a shard's rows are published by one relay at a time in id order
-- (a transaction-scoped advisory lock per shard, see shared/outbox.py), so each key's
-- events keep their order however many relays run.
--
-- Changing the count: one migration that replaces outbox_shards() and drops and adds the
-- column again. Adding the column rewrites the table under an ACCESS EXCLUSIVE lock,
-- which waits for relays in a batch and holds the next ones off, so every unpublished row
-- moves to its new shard in the same commit: no key ever has unpublished rows in two
-- shards, which is what would let two relays reorder it. (Updating shard in place
-- without the rewrite would break exactly that.)
CREATE FUNCTION outbox_shards() RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS 'SELECT 16';

ALTER TABLE outbox
    ADD COLUMN shard smallint NOT NULL
    GENERATED ALWAYS AS (((hashtext(key) & 2147483647) % outbox_shards())::smallint) STORED;

-- "The unpublished rows of shard S in id order": the relay's claim and its look for
-- shards with work both read it.
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (shard, id) WHERE published_at IS NULL;

-- The relays at work on this schema: each one writes its row every few seconds and
-- takes about its share of the shards per batch (all of them when it is alone), so one
-- busy relay does not keep the others from every shard.
CREATE TABLE outbox_relays (
    relay   text        PRIMARY KEY,
    seen_at timestamptz NOT NULL DEFAULT now()
);
