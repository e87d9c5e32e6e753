-- Payloads are kept as the text the API measured (issue 15): jsonb stores numbers as
-- numeric and prints them in full (1e308 as 309 digits, 1e16 as an integer), so 51 KB
-- sent under a 64 KB limit came back as 2.6 MB. The json type keeps the text as written,
-- so the size limit bounds what is stored and returned, and a number reads back as sent.
-- No query looks inside a payload; reads pass the text through (architecture §3).
-- Rewrites both tables once; rows stored before keep jsonb's rendering.
ALTER TABLE tasks ALTER COLUMN payload TYPE json USING payload::json;
ALTER TABLE schedules ALTER COLUMN payload TYPE json USING payload::json;
