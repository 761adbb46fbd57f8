-- Replicas wanted for the work a queue has now: what an autoscaler (KEDA's `postgresql` trigger,
-- rendered by helm/lettuce-worker) asks. Runnable and running jobs both need a slot; both are
-- rows of `job_queue` whose `run_at` has come, so this reads `job_queue` alone (never the
-- history) through its fetch index, and at most `slots_per_worker * max_workers` entries of it:
-- the cost stays flat however long the backlog. `queue` NULL counts every queue.
CREATE OR REPLACE FUNCTION lettuce.desired_workers(
    slots_per_worker int,
    queue            text DEFAULT NULL,
    max_workers      int  DEFAULT 100
) RETURNS int LANGUAGE plpgsql STABLE AS $$
DECLARE
    slots int := greatest(coalesce(slots_per_worker, 1), 1);
    cap   int := greatest(coalesce(max_workers, 1), 1);
    wanted bigint;
BEGIN
    IF desired_workers.queue IS NULL THEN
        SELECT count(*) INTO wanted FROM (
            SELECT 1 FROM lettuce.job_queue j WHERE j.run_at <= now() LIMIT slots::bigint * cap
        ) s;
    ELSE
        SELECT count(*) INTO wanted FROM (
            SELECT 1 FROM lettuce.job_queue j
             WHERE j.queue = desired_workers.queue AND j.run_at <= now()
             LIMIT slots::bigint * cap
        ) s;
    END IF;
    RETURN ((wanted + slots - 1) / slots)::int;
END
$$;
