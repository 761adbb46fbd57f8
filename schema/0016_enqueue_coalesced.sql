-- Coalescing enqueue: at most one job of `kind` per `coalesce_key` WAITS (available, scheduled
-- or retryable) at any time, and a call while one RUNS still leads to one more run after it.
-- `lettuce.enqueue`'s unique key alone cannot say that (a running job is unfinished, so it
-- would swallow the call). Each job takes a slot `<coalesce_key>#<n>` as its unique key: the
-- lowest n no unfinished job holds. A transaction-scoped advisory lock per (kind, key)
-- serialises concurrent callers (it is held until the caller's transaction ends, so the
-- decision and the insert commit together). Returns the waiting job's id, new or existing.
-- Used for `repo.index` (per repository and ref) by github.event, `worker repos index` and the
-- scheduled reindex; usable from any language, inside the caller's transaction.
CREATE OR REPLACE FUNCTION lettuce.enqueue_coalesced(
    kind         text,
    coalesce_key text,
    payload      jsonb       DEFAULT '{}',
    queue        text        DEFAULT 'default',
    priority     int         DEFAULT 0,
    run_at       timestamptz DEFAULT now(),
    max_attempts int         DEFAULT 5,
    traceparent  text        DEFAULT NULL
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    prefix text;
    waiting bigint;
    slot int := 0;
BEGIN
    IF coalesce_key IS NULL OR octet_length(coalesce_key) NOT BETWEEN 1 AND 500 THEN
        RAISE EXCEPTION 'lettuce.enqueue_coalesced: coalesce_key must be 1 to 500 bytes'
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    prefix := coalesce_key || '#';
    PERFORM pg_advisory_xact_lock(hashtextextended('lettuce.coalesce:' || enqueue_coalesced.kind || ':' || coalesce_key, 0));
    -- The slots of this key are one index range of job_queue_unique_idx: '$' sorts right after '#'.
    SELECT j.id INTO waiting FROM lettuce.job_queue j
     WHERE j.kind = enqueue_coalesced.kind
       AND j.unique_key >= prefix AND j.unique_key < coalesce_key || '$'
       AND j.state IN ('available', 'scheduled', 'retryable')
     ORDER BY j.id LIMIT 1;
    IF waiting IS NOT NULL THEN
        RETURN waiting;
    END IF;
    WHILE EXISTS (SELECT 1 FROM lettuce.job_queue j
                   WHERE j.kind = enqueue_coalesced.kind AND j.unique_key = prefix || slot) LOOP
        slot := slot + 1;
    END LOOP;
    RETURN lettuce.enqueue(enqueue_coalesced.kind, payload, queue, priority, run_at, max_attempts,
                           prefix || slot, traceparent);
END
$$
