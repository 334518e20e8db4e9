-- An order's messages, for putting them back into the outbox on request (outbox::republish):
-- without it each request would read the whole outbox.
CREATE INDEX outbox_order ON outbox (order_id, id);
