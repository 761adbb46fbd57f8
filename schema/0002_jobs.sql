CREATE TABLE IF NOT EXISTS lettuce.jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind <> ''),
    queue            text        NOT NULL DEFAULT 'default',
    payload          jsonb       NOT NULL DEFAULT '{}',
    priority         smallint    NOT NULL DEFAULT 0,
    state            text        NOT NULL DEFAULT 'available' CHECK (state IN
                         ('available', 'scheduled', 'running', 'retryable', 'completed', 'discarded', 'cancelled')),
    attempt          int         NOT NULL DEFAULT 0,
    max_attempts     int         NOT NULL DEFAULT 5 CHECK (max_attempts >= 1),
    run_at           timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempted_at     timestamptz,
    finished_at      timestamptz,
    locked_by        text,
    lease_expires_at timestamptz,
    errors           jsonb       NOT NULL DEFAULT '[]',
    unique_key       text,
    traceparent      text
) WITH (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_insert_scale_factor = 0.05,
        autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0)
