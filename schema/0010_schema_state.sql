-- The digest of the statement list last applied; boot skips the list when it matches.
CREATE TABLE IF NOT EXISTS lettuce.schema_state (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    digest     text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    version    text        NOT NULL
)
