-- Platform accounts in shards: no row that every transaction locks.
--
-- Before, every purchase locked the one coin issuance row and every gift the one coin
-- revenue, diamond issuance and commission rows until its batch committed, so the
-- batches of all wallet replicas ran one after another. Now the platform's accounts
-- come in shards, one set per shard, and a transaction books the platform's side in the
-- shard of the Kafka partition its message came from (services/wallet/domain.py
-- `shard_of`). Replicas own disjoint partitions, so their batches lock disjoint platform
-- rows. A shard's balance means nothing alone: the platform's balance of a kind is the
-- sum of its shards, which is what the audit, the entry rules and reconciliation read
-- already (they work by kind, never by owner).
--
-- Shard 0 is the existing rows, owner 'platform', untouched (the ledger is immutable,
-- and a replica of the previous version still running during a rollout keeps booking
-- there instead of creating accounts of its own). Shard n > 0 is owned by
-- 'platform/<n>' and created on first use, like a user's accounts.
--
-- Platform kinds belong to the platform's shards and nobody else. (As in the balance
-- check of migration 0002 the user kinds are listed, a CHECK cannot read account_kinds;
-- a kind added later is a platform kind unless it is added here too.)
ALTER TABLE accounts ADD CONSTRAINT platform_kinds_in_platform_shards
    CHECK (kind IN ('user_coins', 'user_diamonds', 'user_diamond_hold')
           OR owner_id = 'platform'
           OR owner_id ~ '^platform/[1-9][0-9]*$');
