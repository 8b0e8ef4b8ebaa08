-- Gifts. A gift is one ledger transaction (kind 'gift'): the sender's coins go to
-- coin_revenue, and their value, one diamond per coin, is issued as diamonds split
-- between the creator (the creator share) and the platform's commission.
--
-- Diamond accounts (user_diamonds, user_diamond_hold, diamond_issuance,
-- platform_commission, payout_clearing) count in units of 1/10,000 diamond, so a
-- creator share of 50% turns one coin into exactly 5,000 units (0.5 diamond). No
-- diamonds existed before this migration, so no amounts need converting.
INSERT INTO account_kinds (kind, unit, user_owned, negative_allowed) VALUES
    ('platform_commission', 'diamonds', false, false);

INSERT INTO accounts (owner_id, kind) VALUES ('platform', 'platform_commission')
ON CONFLICT (owner_id, kind) DO NOTHING;

-- Coins each user spent per UTC day, for their own spending limits (the day, the ISO
-- week and the month are sums of days). Written with every gift debit, in the same
-- transaction, so a limit set later still counts what was spent earlier in the period.
CREATE TABLE daily_spending (
    user_id text   NOT NULL,
    day     date   NOT NULL,
    coins   bigint NOT NULL CHECK (coins > 0),
    PRIMARY KEY (user_id, day)
);
