-- Yen prices for the catalog. JPY has no minor unit (ISO 4217 exponent 0), so
-- amount_minor counts whole yen: 160 is ¥160, not ¥1.60.
INSERT INTO package_prices (package_id, currency, amount_minor) VALUES
    ('coins_70', 'JPY', 160), ('coins_350', 'JPY', 800), ('coins_700', 'JPY', 1600),
    ('coins_1400', 'JPY', 3200), ('coins_3500', 'JPY', 8000), ('coins_7000', 'JPY', 16000),
    ('coins_17500', 'JPY', 40000)
ON CONFLICT (package_id, currency) DO NOTHING;
