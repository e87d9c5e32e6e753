-- A queue's start rate (issue 18, item 5): at most max_starts_per_second runs claimed per
-- second across every daemon, with up to `burst` at once after a quiet spell (NULL: one
-- second's worth), enforced by a token bucket in the claim (claim.lua, Redis TIME as the
-- clock). NULL max_starts_per_second: no rate. PostgreSQL keeps them, Redis mirrors them.
ALTER TABLE queues ADD COLUMN max_starts_per_second double precision
    CHECK (max_starts_per_second > 0);
ALTER TABLE queues ADD COLUMN burst integer CHECK (burst >= 1);
