-- Published events move out of the outbox (issue 11): the outbox holds only what waits.
--
-- Marking a row published by updating it left its entry in the partial index of
-- unpublished rows until the next VACUUM, and with a day of published rows in the table
-- autovacuum came seldom (once a fifth of millions of rows had changed) and took long
-- (about a minute for 6 million rows): every claim's probes walked the dead entries of
-- each shard, up to 13 ms and 2,500 pages for one claim on an outbox with nothing to
-- publish. Now the relay deletes what it published from the outbox and keeps it in
-- `outbox_published` (a day, for `coinstream trace`), so the outbox stays a few thousand
-- rows and its VACUUM (by the relay every few seconds, and by autovacuum) takes
-- milliseconds.
--
-- The table as it stands becomes `outbox_published`, a day of published rows and all,
-- and a new, empty `outbox` takes its name, its sequence and its unpublished rows (the
-- same ids, so each key's events keep their order). Nothing published is copied, so
-- the migration takes as long as the rows waiting, not the day's. Writers wait for its
-- commit. Rows that a relay of the version before marks in place during a rolling
-- upgrade stay in `outbox` until the purge deletes them a day later; nothing publishes
-- them again (published_at is set).
ALTER TABLE outbox RENAME TO outbox_published;
ALTER INDEX outbox_pkey RENAME TO outbox_published_pkey;
ALTER INDEX outbox_published_at RENAME TO outbox_published_purge;
ALTER INDEX outbox_unpublished RENAME TO outbox_unpublished_old;  -- finds what waits, below

CREATE TABLE outbox (
    id           bigint      PRIMARY KEY DEFAULT nextval('outbox_id_seq'),
    topic        text        NOT NULL,
    key          text        NOT NULL,
    event_id     text        NOT NULL,
    payload      bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz,  -- set only by a relay before this migration (see above)
    shard        smallint    NOT NULL
        GENERATED ALWAYS AS (((hashtext(key) & 2147483647) % outbox_shards())::smallint) STORED,
    headers      jsonb
) WITH (
    -- Vacuumed after every thousand deleted rows whatever the table's size (the default
    -- waits for a fifth of the table), at full speed.
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0
);
CREATE INDEX outbox_unpublished ON outbox (shard, id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

WITH waiting AS (
    DELETE FROM outbox_published WHERE published_at IS NULL
    RETURNING id, topic, key, event_id, payload, created_at, headers
)
INSERT INTO outbox (id, topic, key, event_id, payload, created_at, headers)
SELECT * FROM waiting;

DROP INDEX outbox_unpublished_old;
ALTER TABLE outbox_published ALTER COLUMN id DROP DEFAULT;
ALTER SEQUENCE outbox_id_seq OWNED BY outbox.id;
ALTER TABLE outbox_published DROP COLUMN shard;
