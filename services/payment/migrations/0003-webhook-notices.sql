-- Every chargeback notice the provider's webhook delivered and we accepted, written in
-- the same transaction as the payment.chargeback-received message it became (outbox):
-- chargeback_id makes a replayed notice a duplicate with no second effect, and a reused
-- chargeback_id naming another payment or user a conflict.
CREATE TABLE webhook_notices (
    chargeback_id text        PRIMARY KEY,
    payment_id    text        NOT NULL,
    user_id       text        NOT NULL,
    occurred_at   timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now()
);
