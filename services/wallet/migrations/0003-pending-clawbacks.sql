-- Kafka orders nothing across topics, so payment.purchase-reversed may reach the
-- wallet before the payment.purchase-completed it reverses. Such a reversal waits
-- here, recorded in the transaction that consumed it (its partition moves on), and is
-- applied in the very transaction that credits the purchase; the row is then deleted
-- (the clawback itself is in the ledger, under key clawback:<payment_id>).
CREATE TABLE pending_clawbacks (
    payment_id  text        PRIMARY KEY,
    user_id     text        NOT NULL,
    request_id  text        NOT NULL,  -- the chargeback id
    coins       bigint      NOT NULL,  -- as payment reported them; the clawback mirrors the credit
    received_at timestamptz NOT NULL DEFAULT now()
);
