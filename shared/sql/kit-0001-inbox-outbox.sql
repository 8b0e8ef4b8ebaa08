-- The kit's tables, created in every service's schema before its own migrations.
-- inbox: ids of the messages this service has applied, written in the same
-- transaction as the state change, so a redelivery is recognised and skipped.
CREATE TABLE inbox (
    topic        text        NOT NULL,
    message_id   text        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, message_id)
);

-- outbox: events to publish, written in the same transaction as the state change;
-- the relay claims unpublished rows, publishes them and marks them.
CREATE TABLE outbox (
    id           bigserial   PRIMARY KEY,
    topic        text        NOT NULL,
    key          text        NOT NULL,
    event_id     text        NOT NULL,
    payload      bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;
