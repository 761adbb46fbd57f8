-- When a cluster-wide maintenance task last ran. The rescuer scans `job_queue` (it has no lease
-- index, so claims stay HOT updates); taking a turn here makes N replicas scan once per interval
-- between them instead of N times.
CREATE TABLE IF NOT EXISTS lettuce.maintenance_turns (
    task        text        PRIMARY KEY,
    last_run_at timestamptz NOT NULL,
    taken_by    text
)
