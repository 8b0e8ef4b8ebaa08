-- The outbox is keyed by (shard, id), and the big tables' ANALYZE is not throttled
-- (issue 11).
--
-- 1. No index leads with id any more. The outbox holds only what waits (kit-0004), so
--    its statistics say every row is unpublished, and the planner found it cheaper to
--    take a shard's oldest rows by walking the primary key in id order and filtering
--    on the shard than through the index of each shard's rows: with a backlog of 12,000
--    rows one take read them all for each of 16 shards (146 ms for a batch of 496
--    rows). With (shard, id) as the only key there is no such plan to choose. The relay
--    marks its rows by their physical address (ctid), which nothing changes while it
--    holds their shards (see shared/outbox.py).
-- 2. A claim's probes and takes walk the index entries of rows deleted since the last
--    VACUUM until no snapshot can see them. An ANALYZE holds its snapshot for as long as
--    it runs, and autovacuum's, throttled by autovacuum_vacuum_cost_delay, took up to a
--    minute on a day of published rows while the stack was busy: the outbox's dead rows
--    piled up to 46,000 and every claim got dearer, up to 40 ms (a run at a third of
--    its usual speed). Unthrottled, the same ANALYZE takes about a second; it also reads
--    a tenth of the rows (statistics target 10), which is plenty for a table only ever
--    read through its indexes or by `coinstream trace`.
ALTER TABLE outbox DROP CONSTRAINT outbox_pkey;
ALTER TABLE outbox ADD CONSTRAINT outbox_pkey PRIMARY KEY (shard, id);
DROP INDEX outbox_unpublished;

ALTER TABLE outbox_published SET (autovacuum_vacuum_cost_delay = 0);
ALTER TABLE outbox_published
    ALTER COLUMN id SET STATISTICS 10,
    ALTER COLUMN topic SET STATISTICS 10,
    ALTER COLUMN key SET STATISTICS 10,
    ALTER COLUMN event_id SET STATISTICS 10,
    ALTER COLUMN payload SET STATISTICS 10,
    ALTER COLUMN headers SET STATISTICS 10,
    ALTER COLUMN created_at SET STATISTICS 10,
    ALTER COLUMN published_at SET STATISTICS 10;
ALTER TABLE inbox SET (autovacuum_vacuum_cost_delay = 0);
