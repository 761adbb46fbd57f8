-- Input limits every writer meets: the Rust API, the CLI, `lettuce.enqueue` and a plain INSERT
-- (the CHECK constraints below). README "Limits" documents them; `worker/src/limits.rs` holds the
-- same numbers for the Rust side, and `xtests/tests/poison.rs` checks that the two agree.
--
-- `lettuce.job_limit_problem` names the first limit a job breaks, or NULL. The CHECK constraints
-- test the same conditions inline (a function call per row costs more than the test itself).
CREATE OR REPLACE FUNCTION lettuce.job_limit_problem(
    kind text, queue text, payload jsonb, run_at timestamptz, max_attempts int,
    unique_key text, traceparent text
) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN kind IS NULL OR kind !~ '^[a-z0-9_.:-]+$' OR length(kind) > 128
            THEN 'kind must match [a-z0-9_.:-]{1,128}'
        WHEN queue IS NULL OR queue !~ '^[A-Za-z0-9_.:-]+$' OR length(queue) > 64
            THEN 'queue must match [A-Za-z0-9_.:-]{1,64}'
        WHEN octet_length(payload::text) > 1048576
            THEN 'payload must be at most 1048576 bytes as JSON text'
        WHEN payload @? 'strict $.**{65}'
            THEN 'payload must nest at most 64 levels deep'
        WHEN run_at IS NULL OR NOT isfinite(run_at)
            THEN 'run_at must be a finite time'
        WHEN max_attempts IS NULL OR max_attempts NOT BETWEEN 1 AND 1000
            THEN 'max_attempts must be between 1 and 1000'
        WHEN octet_length(unique_key) > 512
            THEN 'unique_key must be at most 512 bytes'
        WHEN octet_length(traceparent) > 128
            THEN 'traceparent must be at most 128 bytes'
    END
$$;

-- Rows stored before the limits existed and breaking one are finished as `discarded`, the error
-- naming the limit, so the constraints below can be validated (and no claim trips on them).
WITH bad AS (
    DELETE FROM lettuce.job_queue j
     WHERE lettuce.job_limit_problem(j.kind, j.queue, j.payload, j.run_at, j.max_attempts,
                                     j.unique_key, j.traceparent) IS NOT NULL
    RETURNING j.*, lettuce.job_limit_problem(j.kind, j.queue, j.payload, j.run_at, j.max_attempts,
                                             j.unique_key, j.traceparent) AS problem
)
INSERT INTO lettuce.job_history (id, kind, queue, payload, priority, state, attempt, max_attempts,
                                 run_at, created_at, attempted_at, finished_at, locked_by,
                                 lease_expires_at, errors, unique_key, traceparent)
SELECT id, kind, queue, payload, priority, 'discarded', attempt, max_attempts, run_at, created_at,
       attempted_at, now(), locked_by, NULL,
       lettuce.append_error(errors, attempt, 'discarded at upgrade: ' || problem),
       unique_key, traceparent
  FROM bad;

DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT * FROM (VALUES
        ('job_queue_kind_format', $c$kind ~ '^[a-z0-9_.:-]+$' AND length(kind) <= 128$c$),
        ('job_queue_queue_format', $c$queue ~ '^[A-Za-z0-9_.:-]+$' AND length(queue) <= 64$c$),
        ('job_queue_payload_size', $c$octet_length(payload::text) <= 1048576$c$),
        ('job_queue_payload_depth', $c$NOT payload @? 'strict $.**{65}'$c$),
        ('job_queue_run_at_finite', $c$isfinite(run_at)$c$),
        ('job_queue_max_attempts_range', $c$max_attempts BETWEEN 1 AND 1000$c$),
        ('job_queue_unique_key_length', $c$octet_length(unique_key) <= 512$c$),
        ('job_queue_traceparent_length', $c$octet_length(traceparent) <= 128$c$)
    ) AS v(name, expr) LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_constraint
                        WHERE conrelid = 'lettuce.job_queue'::regclass AND conname = c.name) THEN
            EXECUTE format('ALTER TABLE lettuce.job_queue ADD CONSTRAINT %I CHECK (%s) NOT VALID',
                           c.name, c.expr);
            EXECUTE format('ALTER TABLE lettuce.job_queue VALIDATE CONSTRAINT %I', c.name);
        END IF;
    END LOOP;
END
$$
