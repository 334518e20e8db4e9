-- The changed-since listing (`orderbook::statuses`) pages through the orders by the time their
-- status was recorded: reconciliation reads every system's recent changes this way.
CREATE INDEX orders_changed ON orders (updated_at, order_id);
