-- Payout holds: the first phase of a payout moves whole diamonds from the creator's
-- available diamonds to their hold account (ledger kind 'hold'); the second posts them
-- to payout clearing ('hold_post', the payout was paid) or voids them back
-- ('hold_void', it failed). This table tracks each hold's phase and its deadline: the
-- payout service must settle a hold before it, and the audit names any that is late.
CREATE TABLE holds (
    request_id text        PRIMARY KEY,  -- the payout request's id
    payout_id  text        NOT NULL,
    creator_id text        NOT NULL,
    units      bigint      NOT NULL CHECK (units > 0),  -- diamond units (1/10,000)
    status     text        NOT NULL CHECK (status IN ('open', 'posted', 'voided')),
    deadline   timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    closed_at  timestamptz
);

CREATE INDEX holds_open ON holds (deadline) WHERE status = 'open';
