-- Many jobs of one kind from SQL in one statement: one INSERT … SELECT over the payloads, so one
-- executor start, one NOTIFY (the statement trigger of 0005) and no per-row function call. A
-- per-row `SELECT lettuce.enqueue(…) FROM …` pays an INSERT statement per row (its executor start
-- re-reads the table's CHECK constraints each time): BENCHMARKS.md, "Issue 18".
-- The ids come back in the payloads' order. No unique keys here: use lettuce.enqueue for those.
-- Limits as lettuce.enqueue's, with the offending job's 1-based position in the message; a bad
-- job inserts nothing.
CREATE OR REPLACE FUNCTION lettuce.enqueue_many(
    kind         text,
    payloads     jsonb[],
    queue        text        DEFAULT 'default',
    priority     int         DEFAULT 0,
    run_at       timestamptz DEFAULT now(),
    max_attempts int         DEFAULT 5,
    traceparent  text        DEFAULT NULL
) RETURNS SETOF bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    bad bigint;
    problem text;
BEGIN
    IF enqueue_many.priority IS NULL OR enqueue_many.priority NOT BETWEEN -32768 AND 32767 THEN
        RAISE EXCEPTION 'lettuce.enqueue_many: priority must be between -32768 and 32767'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT t.n INTO bad FROM unnest(enqueue_many.payloads) WITH ORDINALITY AS t(p, n)
     WHERE t.p @? 'strict $.** ? (@.type() == "number" && (@ > 1.7976931348623157e308 || @ < -1.7976931348623157e308))'
     ORDER BY t.n LIMIT 1;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'lettuce.enqueue_many: job %: payload numbers must fit a 64-bit float', bad
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    BEGIN
        RETURN QUERY
        INSERT INTO lettuce.job_queue (kind, payload, queue, priority, run_at, max_attempts, traceparent, state)
        SELECT enqueue_many.kind, coalesce(t.p, '{}'), coalesce(enqueue_many.queue, 'default'),
               enqueue_many.priority, coalesce(enqueue_many.run_at, now()), enqueue_many.max_attempts,
               enqueue_many.traceparent,
               CASE WHEN coalesce(enqueue_many.run_at, now()) > now() THEN 'scheduled' ELSE 'available' END
          FROM unnest(enqueue_many.payloads) WITH ORDINALITY AS t(p, n)
         ORDER BY t.n
        RETURNING id;
    EXCEPTION WHEN check_violation OR not_null_violation THEN
        -- The table's CHECK constraints hold the same limits; name the first job that breaks one.
        SELECT t.n, lettuce.job_limit_problem(enqueue_many.kind, coalesce(enqueue_many.queue, 'default'),
                                              coalesce(t.p, '{}'), coalesce(enqueue_many.run_at, now()),
                                              enqueue_many.max_attempts, NULL, enqueue_many.traceparent)
          INTO bad, problem
          FROM unnest(enqueue_many.payloads) WITH ORDINALITY AS t(p, n)
         WHERE lettuce.job_limit_problem(enqueue_many.kind, coalesce(enqueue_many.queue, 'default'),
                                         coalesce(t.p, '{}'), coalesce(enqueue_many.run_at, now()),
                                         enqueue_many.max_attempts, NULL, enqueue_many.traceparent) IS NOT NULL
         ORDER BY t.n LIMIT 1;
        RAISE EXCEPTION 'lettuce.enqueue_many: job %: %', coalesce(bad, 1), coalesce(problem, SQLERRM)
              USING ERRCODE = 'invalid_parameter_value';
    END;
END
$$
