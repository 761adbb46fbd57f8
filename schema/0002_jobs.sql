-- Jobs live in two tables: `job_queue` holds the ones not finished (available, scheduled,
-- running, retryable) and is what claiming, leases and completion touch; `job_history` holds
-- finished ones (completed, discarded, cancelled) until the pruner removes them. Completion
-- moves a row from one to the other, so the hot table stays small whatever the retention, and
-- the claim — which changes no indexed column of `job_queue` — is a HOT update.
-- `lettuce.jobs`, below, is the view over both: the documented read contract (README "SQL interface").

-- Databases created before the split had `lettuce.jobs` as the one table: it becomes the queue
-- table (its finished rows move to the history below).
DO $$
BEGIN
    IF to_regclass('lettuce.job_queue') IS NULL
       AND (SELECT c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'lettuce' AND c.relname = 'jobs') = 'r' THEN
        DROP INDEX IF EXISTS lettuce.jobs_fetch_idx, lettuce.jobs_lease_idx,
                             lettuce.jobs_finished_idx, lettuce.jobs_unique_idx;
        ALTER TABLE lettuce.jobs RENAME TO job_queue;
    END IF;
END
$$;

CREATE TABLE IF NOT EXISTS lettuce.job_queue (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind <> ''),
    queue            text        NOT NULL DEFAULT 'default',
    payload          jsonb       NOT NULL DEFAULT '{}',
    priority         smallint    NOT NULL DEFAULT 0,
    state            text        NOT NULL DEFAULT 'available'
                         CHECK (state IN ('available', 'scheduled', 'running', 'retryable')),
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
);
-- Half-empty pages leave room for the claim's new row version on the same page (HOT).
ALTER TABLE lettuce.job_queue SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0);

CREATE TABLE IF NOT EXISTS lettuce.job_history (
    id               bigint      PRIMARY KEY,
    kind             text        NOT NULL,
    queue            text        NOT NULL,
    payload          jsonb       NOT NULL,
    priority         smallint    NOT NULL,
    state            text        NOT NULL CHECK (state IN ('completed', 'discarded', 'cancelled')),
    attempt          int         NOT NULL,
    max_attempts     int         NOT NULL,
    run_at           timestamptz NOT NULL,
    created_at       timestamptz NOT NULL,
    attempted_at     timestamptz,
    finished_at      timestamptz NOT NULL,
    locked_by        text,
    lease_expires_at timestamptz,
    errors           jsonb       NOT NULL,
    unique_key       text,
    traceparent      text
) WITH (autovacuum_vacuum_scale_factor = 0.05, autovacuum_vacuum_insert_scale_factor = 0.1);

-- Finished rows of a pre-split table (nothing to do otherwise).
WITH moved AS (
    DELETE FROM lettuce.job_queue WHERE state IN ('completed', 'discarded', 'cancelled') RETURNING *
)
INSERT INTO lettuce.job_history (id, kind, queue, payload, priority, state, attempt, max_attempts,
                                 run_at, created_at, attempted_at, finished_at, locked_by,
                                 lease_expires_at, errors, unique_key, traceparent)
SELECT id, kind, queue, payload, priority, state, attempt, max_attempts, run_at, created_at,
       attempted_at, coalesce(finished_at, now()), locked_by, lease_expires_at, errors, unique_key,
       traceparent
  FROM moved;

CREATE OR REPLACE VIEW lettuce.jobs AS
    SELECT id, kind, queue, payload, priority, state, attempt, max_attempts, run_at, created_at,
           attempted_at, finished_at, locked_by, lease_expires_at, errors, unique_key, traceparent
      FROM lettuce.job_queue
    UNION ALL
    SELECT id, kind, queue, payload, priority, state, attempt, max_attempts, run_at, created_at,
           attempted_at, finished_at, locked_by, lease_expires_at, errors, unique_key, traceparent
      FROM lettuce.job_history;

-- Writes through the view (hand fixes, old scripts) still work: defaults as the table had them,
-- and a row goes to the table its state belongs in.
ALTER VIEW lettuce.jobs ALTER COLUMN id SET DEFAULT nextval(pg_get_serial_sequence('lettuce.job_queue', 'id'));
ALTER VIEW lettuce.jobs ALTER COLUMN queue SET DEFAULT 'default';
ALTER VIEW lettuce.jobs ALTER COLUMN payload SET DEFAULT '{}';
ALTER VIEW lettuce.jobs ALTER COLUMN priority SET DEFAULT 0;
ALTER VIEW lettuce.jobs ALTER COLUMN state SET DEFAULT 'available';
ALTER VIEW lettuce.jobs ALTER COLUMN attempt SET DEFAULT 0;
ALTER VIEW lettuce.jobs ALTER COLUMN max_attempts SET DEFAULT 5;
ALTER VIEW lettuce.jobs ALTER COLUMN run_at SET DEFAULT now();
ALTER VIEW lettuce.jobs ALTER COLUMN created_at SET DEFAULT now();
ALTER VIEW lettuce.jobs ALTER COLUMN errors SET DEFAULT '[]';

CREATE OR REPLACE FUNCTION lettuce.jobs_view_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        -- A running attempt whose job an operator finishes by hand (`worker jobs cancel`, or
        -- plain SQL) is told at once, on commit: its worker stops it (channel lettuce_control).
        IF OLD.state = 'running' AND (TG_OP = 'DELETE' OR NEW.state <> 'running') THEN
            PERFORM pg_notify('lettuce_control', 'cancel:' || OLD.id);
        END IF;
        DELETE FROM lettuce.job_queue WHERE id = OLD.id;
        DELETE FROM lettuce.job_history WHERE id = OLD.id;
        IF TG_OP = 'DELETE' THEN
            RETURN OLD;
        END IF;
    END IF;
    IF NEW.state IN ('completed', 'discarded', 'cancelled') THEN
        NEW.finished_at := coalesce(NEW.finished_at, now());
        INSERT INTO lettuce.job_history SELECT NEW.*; -- the view's columns are the table's, in order
    ELSE
        INSERT INTO lettuce.job_queue OVERRIDING SYSTEM VALUE SELECT NEW.*;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER jobs_view_write INSTEAD OF INSERT OR UPDATE OR DELETE ON lettuce.jobs
    FOR EACH ROW EXECUTE FUNCTION lettuce.jobs_view_write()
