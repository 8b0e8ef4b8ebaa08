-- The wallet's double-entry ledger.
-- accounts: one row per (owner, kind) with its running balance. User accounts may not
-- go negative; platform accounts are the other side of issuance and go negative.
CREATE TABLE accounts (
    account_id bigserial   PRIMARY KEY,
    owner_id   text        NOT NULL,
    kind       text        NOT NULL,
    balance    bigint      NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (owner_id, kind),
    CONSTRAINT user_balance_not_negative
        CHECK (balance >= 0 OR kind NOT IN ('user_coins', 'user_diamonds'))
);

-- Platform accounts exist before any user account, so they hold the lowest ids: every
-- writer locks accounts in id order, hence platform rows first, and never deadlocks.
INSERT INTO accounts (owner_id, kind) VALUES
    ('platform', 'coin_issuance'),
    ('platform', 'bonus_issuance');

-- A ledger transaction: one business movement, applied at most once per idempotency key.
CREATE TABLE ledger_transactions (
    tx_id           bigserial   PRIMARY KEY,
    kind            text        NOT NULL,
    idempotency_key text        NOT NULL UNIQUE,
    request_id      text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Immutable entries; the entries of one transaction sum to zero.
CREATE TABLE ledger_entries (
    entry_id      bigserial   PRIMARY KEY,
    tx_id         bigint      NOT NULL REFERENCES ledger_transactions,
    account_id    bigint      NOT NULL REFERENCES accounts,
    amount        bigint      NOT NULL CHECK (amount <> 0),
    balance_after bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_tx ON ledger_entries (tx_id);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, entry_id DESC);

CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger rows are immutable (% on %)', TG_OP, TG_TABLE_NAME;
END $$;

CREATE TRIGGER ledger_entries_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_transactions_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- A transaction's entries are written in one statement; after it, every transaction it
-- touched must sum to zero. One check per statement keeps batches fast.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced bigint;
BEGIN
    SELECT e.tx_id INTO unbalanced
    FROM ledger_entries e
    WHERE e.tx_id IN (SELECT DISTINCT tx_id FROM new_entries)
    GROUP BY e.tx_id
    HAVING sum(e.amount) <> 0
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', unbalanced;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_balanced();
