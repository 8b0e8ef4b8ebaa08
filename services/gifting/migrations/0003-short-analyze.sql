-- Gift requests' ANALYZE is short (issue 11): an ANALYZE holds a snapshot while it runs,
-- and while it does no deleted outbox row can be vacuumed, in any schema (see kit-0005
-- and the wallet's 0012). Autovacuum's took up to 9 s on 1.4 million gifts while the
-- stack was busy. It now runs at full speed and samples 3,000 rows, not 30,000
-- (statistics target 10): gifts are read by key, and the pending ones through their
-- own partial index.
ALTER TABLE gift_requests SET (autovacuum_vacuum_cost_delay = 0);
ALTER TABLE gift_requests
    ALTER COLUMN request_id SET STATISTICS 10,
    ALTER COLUMN sender_id SET STATISTICS 10,
    ALTER COLUMN creator_id SET STATISTICS 10,
    ALTER COLUMN gift_id SET STATISTICS 10,
    ALTER COLUMN quantity SET STATISTICS 10,
    ALTER COLUMN stream_id SET STATISTICS 10,
    ALTER COLUMN video_id SET STATISTICS 10,
    ALTER COLUMN fingerprint SET STATISTICS 10,
    ALTER COLUMN status SET STATISTICS 10,
    ALTER COLUMN reason SET STATISTICS 10,
    ALTER COLUMN coins SET STATISTICS 10,
    ALTER COLUMN diamonds SET STATISTICS 10,
    ALTER COLUMN requested_at SET STATISTICS 10,
    ALTER COLUMN created_at SET STATISTICS 10,
    ALTER COLUMN decided_at SET STATISTICS 10;
