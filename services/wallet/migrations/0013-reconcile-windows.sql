-- `coinstream reconcile` looks at the records of a window (`--window`, and its watch
-- between two full runs: the records since the last full run's cutoff), by when a
-- ledger transaction was created and a hold was closed. Without these indexes each such
-- run reads both tables whole. BRIN: the columns grow with the tables' physical order,
-- so one summary per 128 pages is a few kilobytes for millions of rows and costs a write
-- almost nothing; the newest pages, not summarised yet, are always read, and they are
-- where a window's records are.
-- CONCURRENTLY, outside a transaction, as 0010.
-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS ledger_transactions_created;
CREATE INDEX CONCURRENTLY ledger_transactions_created ON ledger_transactions
    USING brin (created_at);
DROP INDEX CONCURRENTLY IF EXISTS holds_closed;
CREATE INDEX CONCURRENTLY holds_closed ON holds USING brin (closed_at);
