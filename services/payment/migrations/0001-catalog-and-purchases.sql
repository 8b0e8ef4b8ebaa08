-- The coin package catalog (prices per currency, in minor units) and promotions.
-- An operator changes prices and promotions with SQL; no code change needed.
CREATE TABLE packages (
    package_id text    PRIMARY KEY,
    coins      integer NOT NULL CHECK (coins > 0),
    active     boolean NOT NULL DEFAULT true
);

CREATE TABLE package_prices (
    package_id   text   NOT NULL REFERENCES packages,
    currency     text   NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    PRIMARY KEY (package_id, currency)
);

CREATE TABLE promotions (
    promotion_id bigserial   PRIMARY KEY,
    package_id   text        NOT NULL REFERENCES packages,
    bonus_coins  integer     NOT NULL CHECK (bonus_coins > 0),
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL CHECK (ends_at > starts_at)
);
CREATE INDEX promotions_package ON promotions (package_id, starts_at);

INSERT INTO packages (package_id, coins) VALUES
    ('coins_70', 70), ('coins_350', 350), ('coins_700', 700), ('coins_1400', 1400),
    ('coins_3500', 3500), ('coins_7000', 7000), ('coins_17500', 17500);

INSERT INTO package_prices (package_id, currency, amount_minor) VALUES
    ('coins_70', 'USD', 99), ('coins_350', 'USD', 499), ('coins_700', 'USD', 999),
    ('coins_1400', 'USD', 1999), ('coins_3500', 'USD', 4999), ('coins_7000', 'USD', 9999),
    ('coins_17500', 'USD', 24999),
    ('coins_70', 'EUR', 99), ('coins_350', 'EUR', 499), ('coins_700', 'EUR', 999),
    ('coins_1400', 'EUR', 1999), ('coins_3500', 'EUR', 4999), ('coins_7000', 'EUR', 9999),
    ('coins_17500', 'EUR', 24999);

-- One row per purchase request; request_id is the idempotency key of the request.
-- pending -> completed | failed; completed -> reversed (chargeback).
CREATE TABLE purchases (
    request_id     text        PRIMARY KEY,
    user_id        text        NOT NULL,
    package_id     text        NOT NULL,
    price_minor    bigint      NOT NULL,
    currency       text        NOT NULL,
    payment_method text        NOT NULL,
    coins          integer     NOT NULL DEFAULT 0,
    bonus_coins    integer     NOT NULL DEFAULT 0,
    status         text        NOT NULL CHECK (status IN ('pending', 'completed', 'failed', 'reversed')),
    reason         text,
    payment_id     text        UNIQUE,
    requested_at   timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'failed') = (reason IS NOT NULL))
);
CREATE INDEX purchases_user ON purchases (user_id, requested_at);
