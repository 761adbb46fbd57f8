-- Claiming walks the queue table in claim order. No predicate on `state`: the claim then changes
-- no indexed column and is a HOT update (running rows are skipped by the claim's filter).
CREATE INDEX IF NOT EXISTS job_queue_fetch_idx ON lettuce.job_queue (queue, priority, run_at, id);
-- At most one job per (kind, unique_key) not finished: exactly the rows of the queue table.
CREATE UNIQUE INDEX IF NOT EXISTS job_queue_unique_idx ON lettuce.job_queue (kind, unique_key)
    WHERE unique_key IS NOT NULL;
-- The pruner walks finished rows by age.
CREATE INDEX IF NOT EXISTS job_history_finished_idx ON lettuce.job_history (finished_at)
