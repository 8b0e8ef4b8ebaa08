-- The ledger's ANALYZE is short (issue 11). An ANALYZE holds a snapshot while it runs,
-- and while it does no deleted outbox row can be vacuumed, in any schema: every relay's
-- claims walk the dead entries and get dearer. Autovacuum's ANALYZE of 9 million entries
-- took up to 48 s while the stack was busy, throttled by autovacuum_vacuum_cost_delay;
-- 12 s unthrottled. It now runs at full speed and samples 3,000 rows, not 30,000
-- (statistics target 10): the ledger is read through its indexes or summed whole, and
-- no plan of it needs finer statistics. See kit-0005 for the outbox's own tables.
ALTER TABLE ledger_entries SET (autovacuum_vacuum_cost_delay = 0);
ALTER TABLE ledger_entries
    ALTER COLUMN entry_id SET STATISTICS 10,
    ALTER COLUMN tx_id SET STATISTICS 10,
    ALTER COLUMN account_id SET STATISTICS 10,
    ALTER COLUMN amount SET STATISTICS 10,
    ALTER COLUMN balance_after SET STATISTICS 10,
    ALTER COLUMN created_at SET STATISTICS 10,
    ALTER COLUMN counter_account_id SET STATISTICS 10;
ALTER TABLE ledger_transactions SET (autovacuum_vacuum_cost_delay = 0);
ALTER TABLE ledger_transactions
    ALTER COLUMN tx_id SET STATISTICS 10,
    ALTER COLUMN kind SET STATISTICS 10,
    ALTER COLUMN idempotency_key SET STATISTICS 10,
    ALTER COLUMN request_id SET STATISTICS 10,
    ALTER COLUMN created_at SET STATISTICS 10;
