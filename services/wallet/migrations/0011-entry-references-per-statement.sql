-- Every ledger entry names its account, its counter account and its transaction. Foreign
-- keys checked that row by row: three trigger calls and a row lock for each entry, six
-- entries a gift, which cost more than writing the entries (1,900 entries, as one
-- batch of about 320 gifts writes: 46-49 ms with the keys, 10-11 ms without). A
-- statement trigger now looks each distinct account and transaction up once (about
-- 2 ms for such a batch), and what the keys also guarded, that a row entries name is
-- never deleted, triggers refuse: accounts here, ledger transactions since 0001 (they
-- refuse any change).
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

-- A trigger of its own beside ledger_check_entries (0005), on the same transition table.
-- PostgreSQL fires a table's triggers of one event in name order: `ledger_entries_bound`
-- comes before `ledger_entries_checked`, so an entry naming nothing is refused as such
-- before the balance rules join it to accounts.
CREATE FUNCTION ledger_check_references() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
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
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_entries_bound AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_references();
