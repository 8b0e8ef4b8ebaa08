-- Every account kind of the ledger, and the rules the database enforces on entries.
--
-- account_kinds: what the entry trigger needs to know about a kind. `unit` keeps coins
-- and diamonds apart (each transaction balances per unit, so no transaction can turn
-- coins into diamonds by arithmetic); `negative_allowed` marks the issuance accounts,
-- which are the negative side of everything that exists.
CREATE TABLE account_kinds (
    kind             text    PRIMARY KEY,
    unit             text    NOT NULL CHECK (unit IN ('coins', 'diamonds')),
    user_owned       boolean NOT NULL,
    negative_allowed boolean NOT NULL
);

INSERT INTO account_kinds (kind, unit, user_owned, negative_allowed) VALUES
    ('user_coins',        'coins',    true,  false),
    ('user_diamonds',     'diamonds', true,  false),
    ('user_diamond_hold', 'diamonds', true,  false),
    ('coin_issuance',     'coins',    false, true),
    ('bonus_issuance',    'coins',    false, true),
    ('coin_revenue',      'coins',    false, false),
    ('diamond_issuance',  'diamonds', false, true),
    ('payout_clearing',   'diamonds', false, false);

ALTER TABLE accounts
    ADD CONSTRAINT accounts_kind_known FOREIGN KEY (kind) REFERENCES account_kinds;

-- A chargeback may leave user coins negative; the account is then frozen for spending
-- until a credit brings it back to zero or more. The balance column only mirrors the
-- latest entry, so this CHECK is a second line behind the entry trigger below (the
-- issuance kinds are listed again because a CHECK cannot read account_kinds).
ALTER TABLE accounts ADD COLUMN frozen boolean NOT NULL DEFAULT false;
ALTER TABLE accounts DROP CONSTRAINT user_balance_not_negative;
ALTER TABLE accounts ADD CONSTRAINT balance_negative_only_when_frozen
    CHECK (balance >= 0 OR frozen OR kind IN ('coin_issuance', 'bonus_issuance', 'diamond_issuance'));
ALTER TABLE accounts ADD CONSTRAINT only_user_coins_freeze
    CHECK (NOT frozen OR kind = 'user_coins');

-- The new platform accounts. On a fresh database they take the next low ids (3-5),
-- right after the issuance accounts, so writers that lock in id order take platform
-- rows first. On a database that already holds users they get higher ids; the lock
-- order is still one total order, so writers still cannot deadlock.
INSERT INTO accounts (owner_id, kind) VALUES
    ('platform', 'coin_revenue'),
    ('platform', 'diamond_issuance'),
    ('platform', 'payout_clearing')
ON CONFLICT (owner_id, kind) DO NOTHING;

-- The other side of an entry: whether a user's coins were purchased (coin_issuance)
-- or bonus (bonus_issuance), later which gift revenue they went to.
ALTER TABLE ledger_entries ADD COLUMN counter_account_id bigint REFERENCES accounts;

-- Entries written before this migration are all purchase credits, posted in pairs
-- (user, issuance) in entry order; pair them up once. Rows are otherwise immutable.
ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_immutable;
WITH paired AS (
    SELECT entry_id, account_id, tx_id,
           (row_number() OVER (PARTITION BY tx_id ORDER BY entry_id) + 1) / 2 AS pair
    FROM ledger_entries
)
UPDATE ledger_entries e SET counter_account_id = other.account_id
FROM paired this JOIN paired other
     ON other.tx_id = this.tx_id AND other.pair = this.pair AND other.entry_id <> this.entry_id
WHERE e.entry_id = this.entry_id;
ALTER TABLE ledger_entries ENABLE TRIGGER ledger_entries_immutable;

-- The entry rules, checked once per INSERT statement (a batch writes all its entries
-- in one statement, so a batch pays for three set-based queries, not one per row).
DROP TRIGGER ledger_entries_balanced ON ledger_entries;
DROP FUNCTION ledger_check_balanced();

CREATE FUNCTION ledger_check_entries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad bigint;
BEGIN
    -- 1. Every transaction the statement touched sums to zero in each unit.
    SELECT e.tx_id INTO bad
    FROM ledger_entries e
    JOIN accounts a ON a.account_id = e.account_id
    JOIN account_kinds k ON k.kind = a.kind
    WHERE e.tx_id IN (SELECT tx_id FROM new_entries)
    GROUP BY e.tx_id, k.unit
    HAVING sum(e.amount) <> 0
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

CREATE TRIGGER ledger_entries_checked AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_entries();
