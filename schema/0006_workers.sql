CREATE TABLE IF NOT EXISTS lettuce.workers (
    id           text PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          int         NOT NULL,
    version      text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    queues       text[]      NOT NULL DEFAULT '{}'
)
