-- Secret payload fields (issue 10): the top-level payload keys a client marked secret.
-- The payload itself is kept whole, for the handler; the API shows these keys' values
-- redacted (architecture §7).
ALTER TABLE tasks ADD COLUMN secret_fields text[] NOT NULL DEFAULT '{}';
