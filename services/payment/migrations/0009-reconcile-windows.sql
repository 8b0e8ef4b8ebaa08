-- `coinstream reconcile` looks at the records of a window (`--window`, and its watch
-- between two full runs): purchases by when they were charged (or, never charged, last
-- changed) and by when they last changed (reversed, failed). BRIN, as the wallet's 0013:
-- both grow with the table's physical order, a summary per 128 pages costs a write almost
-- nothing, and the newest pages, where a window's purchases are, are always read.
-- CONCURRENTLY, outside a transaction: purchases are written all the time.
-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS purchases_charged;
CREATE INDEX CONCURRENTLY purchases_charged ON purchases
    USING brin ((coalesce(charged_at, updated_at)));
DROP INDEX CONCURRENTLY IF EXISTS purchases_updated;
CREATE INDEX CONCURRENTLY purchases_updated ON purchases USING brin (updated_at);
