CREATE SCHEMA IF NOT EXISTS lettuce;

-- The two rules every statement over job rows shares, defined once (plain SQL functions, which
-- the planner inlines). `errors` of a job gains one `{attempt, at, error}` entry per failure.
CREATE OR REPLACE FUNCTION lettuce.append_error(errors jsonb, attempt int, error text)
RETURNS jsonb LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN error IS NULL THEN errors
                ELSE errors || jsonb_build_array(jsonb_build_object('attempt', attempt, 'at', now(), 'error', error))
           END
$$;

-- A failed attempt that was the job's last finishes the job as `discarded` (the worker's Rust
-- side, `job::attempts_spent`, is the same rule; a test keeps them equal).
CREATE OR REPLACE FUNCTION lettuce.attempts_spent(attempt int, max_attempts int)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT attempt >= max_attempts
$$
