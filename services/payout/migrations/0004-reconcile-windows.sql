-- `coinstream reconcile` looks at the records of a window (`--window`, and its watch
-- between two full runs), here the payouts completed or failed since then. BRIN, as the
-- wallet's 0013: updated_at grows with the table's physical order, a summary per 128
-- pages costs a write almost nothing, and the newest pages are always read.
-- CONCURRENTLY, outside a transaction: payouts are written all the time.
-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS payouts_updated;
CREATE INDEX CONCURRENTLY payouts_updated ON payouts USING brin (updated_at);
