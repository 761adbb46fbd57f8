-- The schema's revision beside its digest (see schema/REVISION): a binary applies this list
-- only over a database at its own revision or older, and runs against a newer one only when
-- `min_compatible_revision` is at most its own. Rows from before revisions read as revision 0.
ALTER TABLE lettuce.schema_state
    ADD COLUMN IF NOT EXISTS revision                integer NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS min_compatible_revision integer NOT NULL DEFAULT 0
