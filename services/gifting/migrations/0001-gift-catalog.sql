-- The gift catalog; an operator adds, reprices or retires gifts with SQL.
CREATE TABLE gifts (
    gift_id text    PRIMARY KEY,
    name    text    NOT NULL,
    coins   integer NOT NULL CHECK (coins > 0),
    active  boolean NOT NULL DEFAULT true
);

INSERT INTO gifts (gift_id, name, coins) VALUES
    ('rose', 'Rose', 1),
    ('panda', 'Panda', 5),
    ('love_bang', 'Love Bang', 25),
    ('sun_cream', 'Sun Cream', 50),
    ('rainbow_puke', 'Rainbow Puke', 100),
    ('concert', 'Concert', 500),
    ('im_very_rich', 'I''m Very Rich', 1000),
    ('interstellar', 'Interstellar', 10000),
    ('planet', 'Planet', 15000),
    ('rocket', 'Rocket', 20000),
    ('lion', 'Lion', 29999),
    ('universe', 'Universe', 44999);
