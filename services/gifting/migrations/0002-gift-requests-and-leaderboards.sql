-- Every gift request, with its one outcome. `pending` waits for the wallet's answer
-- (the saga's debit); `sent` and `rejected` are final and are never changed again.
CREATE TABLE gift_requests (
    request_id   text        PRIMARY KEY,
    sender_id    text        NOT NULL,
    creator_id   text        NOT NULL,
    gift_id      text        NOT NULL,
    quantity     numeric     NOT NULL,  -- as asked, even absurd (then invalid_quantity)
    stream_id    text,
    video_id     text,
    fingerprint  text        NOT NULL,  -- a reused request_id must carry the same request
    status       text        NOT NULL CHECK (status IN ('pending', 'sent', 'rejected')),
    reason       text,
    coins        bigint      NOT NULL DEFAULT 0 CHECK (coins >= 0),
    diamonds     numeric     NOT NULL DEFAULT 0 CHECK (diamonds >= 0),  -- exact
    requested_at timestamptz NOT NULL,  -- the request's occurred_at
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    decided_at   timestamptz,
    CHECK ((status = 'rejected') = (reason IS NOT NULL))
);

-- Operators look for requests still waiting for the wallet.
CREATE INDEX gift_requests_pending ON gift_requests (created_at) WHERE status = 'pending';

-- Coins each sender has given in each live stream, from gifts sent.
CREATE TABLE leaderboard_entries (
    stream_id  text        NOT NULL,
    sender_id  text        NOT NULL,
    coins      bigint      NOT NULL CHECK (coins > 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, sender_id)
);

CREATE INDEX leaderboard_ranking ON leaderboard_entries (stream_id, coins DESC, sender_id);
