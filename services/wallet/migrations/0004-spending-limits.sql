-- A user's own coin spending limits (responsible spending) per UTC calendar day, ISO
-- week (from Monday) and calendar month. No row: no limit. The gifting saga's debits
-- enforce them; the wallet stores them and shows them with the balance.
CREATE TABLE spending_limits (
    user_id    text        NOT NULL,
    period     text        NOT NULL CHECK (period IN ('day', 'week', 'month')),
    max_coins  bigint      NOT NULL CHECK (max_coins >= 0),
    request_id text        NOT NULL,  -- the request that set it
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, period)
);
