-- `coinstream trace` (shared/journey.py) finds a request's ledger transactions, and a
-- chargeback's clawback still waiting for coins, by request_id: without these indexes it
-- reads both tables whole (the ledger grows with every money movement).
-- CONCURRENTLY, so outside a transaction: a plain CREATE INDEX would stop the ledger's
-- writes for as long as the build takes on a large table. An interrupted build leaves an
-- invalid index behind, hence the DROP first when the migration runs again.
-- transactional: false
DROP INDEX CONCURRENTLY IF EXISTS ledger_transactions_request;
CREATE INDEX CONCURRENTLY ledger_transactions_request ON ledger_transactions (request_id);
DROP INDEX CONCURRENTLY IF EXISTS pending_clawbacks_request;
CREATE INDEX CONCURRENTLY pending_clawbacks_request ON pending_clawbacks (request_id);
