CREATE TABLE IF NOT EXISTS lettuce.job_artifacts (
    job_id     bigint      NOT NULL,
    key        text        NOT NULL,
    size       bigint      NOT NULL,
    sha256     text        NOT NULL,
    etag       text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, key)
)
