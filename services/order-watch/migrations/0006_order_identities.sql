-- Issue 19: support finds an order by the ids people quote — the external order id a partner or
-- the shop front end gave it, the partner, the customer — as well as by its own id; partial ids
-- and typos get suggestions. Never by personal data: these ids are what the spans carry
-- (`order.external_id`, `partner.id`, and `customer.id`, a pseudonymous UUID), and a value the
-- masking rules masked is not recorded.
--
-- A table of its own rather than columns of `orders`: an order's ids are written once, when the
-- spans that carry them arrive, while its `orders` row is rewritten by every batch of its spans
-- and would carry these indexes into each of those writes.

CREATE TABLE order_identities (
    -- erasing an order or ending its retention deletes its ids with it
    order_id     UUID        PRIMARY KEY REFERENCES orders (order_id) ON DELETE CASCADE,
    -- as the first span that carried each said it; NULL until one did
    external_id  TEXT,
    partner_id   TEXT,
    customer_id  TEXT,
    -- the order's first span, for "the partner's recent orders"
    first_seen   TIMESTAMPTZ NOT NULL
);

-- B-trees in byte order (C collation) of the lowercased ids: exact lookups, ids that begin with a
-- text (a range), a partner's or customer's orders newest first, and an id's neighbours in that
-- order, which share the longest beginnings with it; reversed, the longest endings. What a
-- mistyped id resembles is found among those neighbours (`order_watch::desk::search`).
CREATE INDEX order_identities_external ON order_identities ((lower(external_id) COLLATE "C"));
CREATE INDEX order_identities_external_reversed
    ON order_identities ((reverse(lower(external_id)) COLLATE "C"));
CREATE INDEX order_identities_partner
    ON order_identities ((lower(partner_id) COLLATE "C"), first_seen DESC);
CREATE INDEX order_identities_customer
    ON order_identities ((lower(customer_id) COLLATE "C"), first_seen DESC);

-- The ids of journeys stored before: from their spans, the earliest span carrying each.
INSERT INTO order_identities (order_id, external_id, partner_id, customer_id, first_seen)
SELECT s.order_id, s.external_id, s.partner_id, s.customer_id, o.first_seen
FROM (
    SELECT order_id,
        (array_agg(attributes ->> 'order.external_id' ORDER BY start_time)
            FILTER (WHERE attributes ->> 'order.external_id' NOT LIKE '%[masked]%'))[1] AS external_id,
        (array_agg(attributes ->> 'partner.id' ORDER BY start_time)
            FILTER (WHERE attributes ->> 'partner.id' NOT LIKE '%[masked]%'))[1] AS partner_id,
        (array_agg(lower(attributes ->> 'customer.id') ORDER BY start_time)
            FILTER (WHERE attributes ->> 'customer.id' NOT LIKE '%[masked]%'))[1] AS customer_id
    FROM spans
    WHERE attributes ?| ARRAY['order.external_id', 'partner.id', 'customer.id']
    GROUP BY order_id
) s
JOIN orders o ON o.order_id = s.order_id
WHERE COALESCE(s.external_id, s.partner_id, s.customer_id) IS NOT NULL;
