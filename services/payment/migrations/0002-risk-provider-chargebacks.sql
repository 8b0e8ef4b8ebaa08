-- What a repeated request must match to be the same request (idempotency_conflict
-- otherwise), and what the provider answered when it charged.
ALTER TABLE purchases
    ADD COLUMN fingerprint        text,
    ADD COLUMN provider_reference text,
    ADD COLUMN charged_at         timestamptz;

-- Risk limits read one user's recent purchases: by day (spend) and by hour (velocity).
DROP INDEX purchases_user;
CREATE INDEX purchases_user_created ON purchases (user_id, created_at);

-- Every chargeback received, with what it did; chargeback_id makes it idempotent.
CREATE TABLE chargebacks (
    chargeback_id text        PRIMARY KEY,
    payment_id    text        NOT NULL,
    user_id       text        NOT NULL,
    outcome       text        NOT NULL CHECK (outcome IN ('reversed', 'unknown_payment', 'already_reversed')),
    occurred_at   timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now()
);
