CREATE TABLE IF NOT EXISTS lettuce.diag_executions (
    job_id    bigint      NOT NULL,
    attempt   int         NOT NULL,
    worker_id text        NOT NULL,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS diag_executions_job_idx ON lettuce.diag_executions (job_id)
