-- Enqueue from any language, inside the caller's transaction. The NOTIFY that wakes workers
-- comes from the statement-level trigger (0005), so it is delivered on commit.
CREATE OR REPLACE FUNCTION lettuce.enqueue(
    kind         text,
    payload      jsonb       DEFAULT '{}',
    queue        text        DEFAULT 'default',
    priority     int         DEFAULT 0,
    run_at       timestamptz DEFAULT now(),
    max_attempts int         DEFAULT 5,
    unique_key   text        DEFAULT NULL,
    traceparent  text        DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
    problem text;
BEGIN
    -- The input limits: lettuce.job_limit_problem (0013_limits.sql, created later in the list;
    -- plpgsql resolves it when called).
    IF enqueue.priority IS NULL OR enqueue.priority NOT BETWEEN -32768 AND 32767 THEN
        RAISE EXCEPTION 'lettuce.enqueue: priority must be between -32768 and 32767'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    problem := lettuce.job_limit_problem(enqueue.kind, coalesce(enqueue.queue, 'default'),
                                         coalesce(enqueue.payload, '{}'), coalesce(enqueue.run_at, now()),
                                         enqueue.max_attempts, enqueue.unique_key, enqueue.traceparent);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'lettuce.enqueue: %', problem USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Numbers beyond a double's range are valid JSON but no client decodes them.
    IF enqueue.payload @? 'strict $.** ? (@.type() == "number" && (@ > 1.7976931348623157e308 || @ < -1.7976931348623157e308))' THEN
        RAISE EXCEPTION 'lettuce.enqueue: payload numbers must fit a 64-bit float'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        INSERT INTO lettuce.job_queue (kind, payload, queue, priority, run_at, max_attempts, unique_key, traceparent, state)
        VALUES (enqueue.kind, coalesce(enqueue.payload, '{}'), coalesce(enqueue.queue, 'default'),
                enqueue.priority, coalesce(enqueue.run_at, now()), enqueue.max_attempts,
                enqueue.unique_key, enqueue.traceparent,
                CASE WHEN coalesce(enqueue.run_at, now()) > now() THEN 'scheduled' ELSE 'available' END)
        ON CONFLICT (kind, unique_key) WHERE unique_key IS NOT NULL DO NOTHING
        RETURNING id INTO new_id;
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
        SELECT j.id INTO new_id FROM lettuce.job_queue j
         WHERE j.kind = enqueue.kind AND j.unique_key = enqueue.unique_key;
        IF new_id IS NOT NULL THEN
            RETURN new_id;
        END IF;
        -- The conflicting job finished between the two statements: try the insert again.
    END LOOP;
END
$$
