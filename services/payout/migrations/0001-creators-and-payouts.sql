-- What the identity system last said about each creator (payout.creator-updated).
CREATE TABLE creators (
    creator_id    text        PRIMARY KEY,
    verified      boolean     NOT NULL,  -- identity, age 18+, tax form on file
    payout_method text        NOT NULL,
    currency      text        NOT NULL,
    updated_at    timestamptz NOT NULL   -- the update's occurred_at; older ones are ignored
);

-- Every payout request with its one outcome. holding: the wallet is asked to reserve
-- the diamonds; held: reserved, the provider is being paid; unknown: the provider's
-- answer was lost and reconciliation will ask it; completed / failed are final.
CREATE TABLE payouts (
    request_id         text        PRIMARY KEY,
    payout_id          text        NOT NULL UNIQUE,  -- the provider's idempotency key
    creator_id         text        NOT NULL,
    diamonds           bigint      NOT NULL,
    status             text        NOT NULL
        CHECK (status IN ('holding', 'held', 'unknown', 'completed', 'failed')),
    reason             text,
    fingerprint        text        NOT NULL,
    amount_minor       bigint,
    currency           text,
    payout_method      text,
    usd_minor          bigint      NOT NULL DEFAULT 0,  -- counts against the daily limit
    provider_reference text,
    hold_deadline      timestamptz,
    requested_at       timestamptz NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK ((status = 'failed') = (reason IS NOT NULL))
);

CREATE INDEX payouts_by_creator ON payouts (creator_id, created_at DESC);
CREATE INDEX payouts_in_flight ON payouts (updated_at) WHERE status IN ('held', 'unknown');

-- The simulated bank's own books (services/payout/provider.py): a remote system's
-- records, kept here so they outlive a restart of the payout service.
CREATE TABLE simulated_bank_transfers (
    payout_id    text        PRIMARY KEY,
    method       text        NOT NULL,
    amount_minor bigint      NOT NULL,
    currency     text        NOT NULL,
    outcome      text        NOT NULL CHECK (outcome IN ('paid', 'rejected')),
    reference    text        NOT NULL,
    calls        integer     NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now()
);
