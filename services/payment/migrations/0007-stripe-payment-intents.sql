-- The Stripe adapter's own record (services/payment/stripe_provider.py): which
-- PaymentIntent was made for a purchase's idempotency key (its request_id). Stripe
-- cannot be asked "what did you do under this idempotency key?", so the adapter keeps
-- the answer itself, before it confirms: a key with no row was never confirmed, so it
-- never charged. A row without a PaymentIntent is a key that reconciliation closed
-- (it found nothing): a charge call still on its way must not confirm it any more.
CREATE TABLE stripe_payment_intents (
    request_id        text        PRIMARY KEY,
    payment_intent_id text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
