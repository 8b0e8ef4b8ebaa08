-- The simulated card provider kept its books in the payment process's memory before
-- migration 0004 gave it a table, so the charges it approved then were lost with each
-- restart. Every purchase completed (or since reversed) without a row was approved by
-- it: record those charges as it made them, so the simulated provider's books — which
-- `coinstream reconcile` reads — are complete on a stack that ran before 0004. A
-- deployment on a real provider has no use for this table; the rows are then inert.
INSERT INTO simulated_card_charges
    (idempotency_key, method, amount_minor, currency, outcome, reference, created_at)
SELECT p.request_id, p.payment_method, p.price_minor::bigint, p.currency, 'approved',
       coalesce(p.provider_reference, 'sim_ch_' || p.request_id),
       coalesce(p.charged_at, p.updated_at)
FROM purchases p
WHERE p.status IN ('completed', 'reversed')
  -- before this schema had the table (yoyo's record of applying 0004; on a database
  -- created with the table there is no such purchase and nothing is inserted)
  AND p.created_at < (SELECT applied_at_utc AT TIME ZONE 'UTC' FROM _yoyo_migration
                      WHERE migration_id = '0004-simulated-card-charges')
ON CONFLICT (idempotency_key) DO NOTHING;
