-- Finished jobs by unique key (only those that have one: the hot path's keyless jobs write no
-- entry). The scheduled reindex asks it whether a repository's last index failed recently, so a
-- repository that cannot be indexed is tried once per interval, not on every pass.
CREATE INDEX IF NOT EXISTS job_history_unique_key_idx ON lettuce.job_history (unique_key text_pattern_ops)
    WHERE unique_key IS NOT NULL
