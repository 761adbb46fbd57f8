CREATE TABLE IF NOT EXISTS lettuce.instance (
    singleton                 boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    instance_id               uuid        NOT NULL DEFAULT gen_random_uuid(),
    created_at                timestamptz NOT NULL DEFAULT now(),
    telemetry_last_receipt_at timestamptz,
    license_limit_reached_at  timestamptz
);
INSERT INTO lettuce.instance (singleton) VALUES (true) ON CONFLICT DO NOTHING
