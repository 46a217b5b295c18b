CREATE TABLE products (
    id          INTEGER PRIMARY KEY,
    sku         TEXT NOT NULL UNIQUE,
    title       TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0)
);

INSERT INTO products (id, sku, title, price_cents) VALUES
    (1, 'MUG-01', 'Coffee mug', 1200),
    (2, 'TEE-01', 'T-shirt', 2500);
