-- Who made a move that a person or a client asked for: the audit name of the caller (a person
-- through SSO, a partner's client, the customer with the order's token). Null for moves a service
-- made on its own or took from another's message.
ALTER TABLE history ADD COLUMN actor TEXT;
