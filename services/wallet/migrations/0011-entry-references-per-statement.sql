-- Every ledger entry names its account, its counter account and its transaction. Foreign
-- keys checked that row by row: three trigger calls and a row lock for each entry, six
-- entries a gift, which cost more than writing the entries (1,900 entries, as one
-- batch of about 320 gifts writes: 46-49 ms with the keys, 10-11 ms without). The entry
-- check of each statement now looks each distinct account and transaction up once
-- (rule 0 below, about 2 ms for such a batch), and what the keys also guarded, that a
-- row entries name is never deleted, triggers refuse: accounts here, ledger transactions
-- since 0001 (they refuse any change).
ALTER TABLE ledger_entries
    DROP CONSTRAINT ledger_entries_account_id_fkey,
    DROP CONSTRAINT ledger_entries_counter_account_id_fkey,
    DROP CONSTRAINT ledger_entries_tx_id_fkey;

CREATE FUNCTION accounts_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'accounts are never deleted: ledger entries name them (% on %)',
        TG_OP, TG_TABLE_NAME;
END $$;

CREATE TRIGGER accounts_kept BEFORE DELETE OR TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION accounts_refuse_delete();

CREATE OR REPLACE FUNCTION ledger_check_entries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad bigint;
    missing bigint;
BEGIN
    -- 0. Every entry names an account, a counter account (if any) and a transaction
    --    that exist: each distinct one looked up once for the whole statement.
    SELECT cardinality(w.ids) - (SELECT count(*) FROM accounts WHERE account_id = ANY(w.ids))
    INTO missing
    FROM (SELECT array_agg(DISTINCT id) AS ids
          FROM (SELECT account_id AS id FROM new_entries
                UNION ALL
                SELECT counter_account_id FROM new_entries
                WHERE counter_account_id IS NOT NULL) named) w;
    IF missing > 0 THEN
        RAISE EXCEPTION 'ledger entries name % account(s) that do not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    SELECT cardinality(w.ids) - (SELECT count(*) FROM ledger_transactions WHERE tx_id = ANY(w.ids))
    INTO missing
    FROM (SELECT array_agg(DISTINCT tx_id) AS ids FROM new_entries) w;
    IF missing > 0 THEN
        RAISE EXCEPTION 'ledger entries name % transaction(s) that do not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;

    -- 1. Every transaction the statement touched sums to zero in each unit.
    SELECT t.tx_id INTO bad
    FROM (SELECT DISTINCT tx_id FROM new_entries) t
    WHERE EXISTS (
        SELECT 1
        FROM ledger_entries e
        JOIN accounts a ON a.account_id = e.account_id
        JOIN account_kinds k ON k.kind = a.kind
        WHERE e.tx_id = t.tx_id
        GROUP BY k.unit
        HAVING sum(e.amount) <> 0
    )
    LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', bad
            USING ERRCODE = 'check_violation';
    END IF;

    -- 2. Every entry continues its account's running balance, so balance_after (which
    --    rule 3 trusts) is the true balance, whatever the writer computed.
    SELECT n.entry_id INTO bad
    FROM new_entries n
    LEFT JOIN LATERAL (
        SELECT o.balance_after FROM ledger_entries o
        WHERE o.account_id = n.account_id AND o.entry_id < n.entry_id
        ORDER BY o.entry_id DESC LIMIT 1
    ) previous ON true
    WHERE n.balance_after <> coalesce(previous.balance_after, 0) + n.amount
    LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'ledger entry % does not continue its account''s balance', bad
            USING ERRCODE = 'check_violation';
    END IF;

    -- 3. No entry takes an account below zero, except issuance accounts (negative by
    --    design) and a clawback taking user coins back after a chargeback.
    SELECT n.entry_id INTO bad
    FROM new_entries n
    JOIN accounts a ON a.account_id = n.account_id
    JOIN account_kinds k ON k.kind = a.kind
    JOIN ledger_transactions t ON t.tx_id = n.tx_id
    WHERE n.amount < 0 AND n.balance_after < 0 AND NOT k.negative_allowed
      AND NOT (t.kind = 'clawback' AND a.kind = 'user_coins')
    LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'ledger entry % would take its account below zero', bad
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
