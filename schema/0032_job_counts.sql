-- Completed jobs dropped at completion without a history row (`LETTUCE_JOB_RETENTION` with
-- `completed=0`: delete on success), counted per hour and worker process, so the heartbeat's
-- jobs_completed_24h stays right in every retention mode (history rows + these counts). Keyed
-- by worker so two processes' completions never wait on one counter row; the pruner removes
-- hours older than two days.
CREATE TABLE IF NOT EXISTS lettuce.job_counts (
    hour      timestamptz NOT NULL,
    worker_id text        NOT NULL,
    state     text        NOT NULL,
    n         bigint      NOT NULL,
    PRIMARY KEY (hour, worker_id, state)
)
