-- Claiming scans only runnable rows, in claim order.
CREATE INDEX IF NOT EXISTS jobs_fetch_idx ON lettuce.jobs (queue, priority, run_at, id)
    WHERE state IN ('available', 'scheduled', 'retryable');
-- The rescuer looks for expired leases among running rows only.
CREATE INDEX IF NOT EXISTS jobs_lease_idx ON lettuce.jobs (lease_expires_at)
    WHERE state = 'running';
-- The pruner walks finished rows by age.
CREATE INDEX IF NOT EXISTS jobs_finished_idx ON lettuce.jobs (finished_at)
    WHERE state IN ('completed', 'discarded', 'cancelled');
-- At most one job per (kind, unique_key) in a non-final state.
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_idx ON lettuce.jobs (kind, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('available', 'scheduled', 'running', 'retryable');
