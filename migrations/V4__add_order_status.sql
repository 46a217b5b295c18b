-- Orders get a status; existing ones were all delivered.
ALTER TABLE orders ADD COLUMN status TEXT NOT NULL DEFAULT 'pending';
UPDATE orders SET status = 'delivered' WHERE placed_at < CURRENT_TIMESTAMP;
CREATE INDEX orders_status ON orders (status);
