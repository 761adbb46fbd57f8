-- One row per UTC day the telemetry heartbeat stands for. The row, not process memory, is what
-- makes the ping once per instance per day: a replica sends only after it claimed the row
-- (insert, or a conditional update once `not_before` has passed and nothing was sent).
CREATE TABLE IF NOT EXISTS lettuce.telemetry_heartbeats (
    day              date PRIMARY KEY,
    -- The worker that holds (or last held) the day's send.
    claimed_by       text        NOT NULL,
    claimed_at       timestamptz NOT NULL DEFAULT now(),
    -- No replica may claim the day before this: covers an attempt in flight (a lease) and,
    -- after a failure, the retry backoff.
    not_before       timestamptz NOT NULL,
    attempts         int         NOT NULL DEFAULT 1,
    -- Set when the receiver answered 2xx; the day is then done.
    sent_at          timestamptz,
    last_status      int,
    last_error       text,
    -- Set when the "no receipt in 7 days" warning was logged for this day (once per instance).
    stale_warned_at  timestamptz
)
