-- The repositories this instance keeps indexed: one row per (provider, host, full name). The
-- license's `repos` cap counts these rows. `repo.webhook.ensure` keeps `webhook_status`;
-- `repo.index` records the latest index (commit, time, manifest key, counts) in the same
-- transaction as its completion.
CREATE TABLE IF NOT EXISTS lettuce.repositories (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider             text        NOT NULL CHECK (provider IN ('github', 'gitlab')),
    host                 text        NOT NULL CHECK (host ~ '^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$'),
    full_name            text        NOT NULL
                         CHECK (full_name ~ '^[A-Za-z0-9_.-]{1,100}(/[A-Za-z0-9_.-]{1,100}){1,20}$'
                                AND full_name !~ '(^|/)\.\.?(/|$)' AND octet_length(full_name) <= 255),
    installation_id      bigint      CHECK (installation_id > 0),
    account_id           bigint      CHECK (account_id > 0),
    default_branch       text        CHECK (octet_length(default_branch) <= 255),
    last_indexed_commit  text        CHECK (last_indexed_commit ~ '^[0-9a-f]{40}([0-9a-f]{24})?$'),
    last_indexed_ref     text        CHECK (octet_length(last_indexed_ref) <= 255),
    last_indexed_at      timestamptz,
    manifest_key         text        CHECK (octet_length(manifest_key) <= 1024),
    file_count           bigint      CHECK (file_count >= 0),
    symbol_count         bigint      CHECK (symbol_count >= 0),
    webhook_status       text        NOT NULL DEFAULT 'pending'
                         CHECK (webhook_status IN ('pending', 'active', 'manual', 'failed')),
    webhook_error        text        CHECK (octet_length(webhook_error) <= 2048),
    -- The hook `repo.webhook.ensure` made, and a SHA-256 of the secret it set (never the
    -- secret): a changed LETTUCE_WEBHOOK_SECRET updates the hook.
    webhook_id           bigint      CHECK (webhook_id > 0),
    webhook_secret_sha256 text       CHECK (webhook_secret_sha256 ~ '^[0-9a-f]{64}$'),
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (provider, host, full_name)
)
