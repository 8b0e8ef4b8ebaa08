-- `coinstream reconcile` looks at the records of a window (`--window`, and its watch
-- between two full runs), here the gifts decided since then. BRIN, as the wallet's 0013:
-- decided_at grows with the table's physical order, a summary per 128 pages costs a
-- write almost nothing, and the newest pages, where a window's gifts are, are always read.
-- CONCURRENTLY, outside a transaction: gift requests are written all the time.
-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS gift_requests_decided;
CREATE INDEX CONCURRENTLY gift_requests_decided ON gift_requests USING brin (decided_at);
