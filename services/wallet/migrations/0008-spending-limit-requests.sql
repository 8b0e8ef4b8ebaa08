-- What each spending-limit request asked, by request_id: a request_id reused for
-- another limit is refused as idempotency_conflict, as every other request is. The
-- inbox only says a request_id was seen; spending_limits keeps only the latest one.
CREATE TABLE spending_limit_requests (
    request_id  text        PRIMARY KEY,
    fingerprint text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
