-- Webhook deliveries `github.event` has handled, by GitHub's delivery id (X-GitHub-Delivery):
-- GitHub redelivers, and a redelivered id must do nothing twice. Kept 7 days (the pruner),
-- longer than GitHub offers redelivery. `job_id` is the `repo.index` it led to, if any.
CREATE TABLE IF NOT EXISTS lettuce.github_deliveries (
    delivery_id text        PRIMARY KEY CHECK (octet_length(delivery_id) BETWEEN 1 AND 100),
    event       text        NOT NULL CHECK (octet_length(event) BETWEEN 1 AND 100),
    job_id      bigint,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS github_deliveries_received_idx ON lettuce.github_deliveries (received_at)
