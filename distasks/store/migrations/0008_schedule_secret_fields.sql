-- A schedule's template may mark payload keys secret, as a create may (0007): shown as
-- "[secret]" in the schedule and passed on to each task it creates.
ALTER TABLE schedules ADD COLUMN secret_fields text[] NOT NULL DEFAULT '{}';
