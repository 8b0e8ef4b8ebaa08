-- The simulated card provider's own books (services/payment/provider.py): a remote
-- system's records, kept here so they outlive a restart of the payment service as a
-- real provider's would. One row per idempotency key: a key is charged at most once.
CREATE TABLE simulated_card_charges (
    idempotency_key text        PRIMARY KEY,
    method          text        NOT NULL,
    amount_minor    bigint      NOT NULL,
    currency        text        NOT NULL,
    outcome         text        NOT NULL CHECK (outcome IN ('approved', 'declined')),
    reference       text        NOT NULL,
    calls           integer     NOT NULL DEFAULT 1,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Reconciliation looks for purchases still pending (charge outcome unknown) longest
-- untouched first.
CREATE INDEX purchases_pending ON purchases (updated_at) WHERE status = 'pending';
