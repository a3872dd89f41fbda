-- Create the links, tags, API keys and applied click entries tables.
--
-- Names are unqualified here: yoyo sets search_path to the target schema.

CREATE TABLE api_keys (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);

CREATE TABLE links (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain TEXT NOT NULL DEFAULT '',
    code TEXT NOT NULL,
    url TEXT NOT NULL,
    title TEXT,
    redirect_status INTEGER NOT NULL DEFAULT 302,
    expires_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at TIMESTAMPTZ,
    clicks BIGINT NOT NULL DEFAULT 0,
    created_by BIGINT REFERENCES api_keys (id),
    CONSTRAINT links_domain_code_key UNIQUE (domain, code)
);

CREATE TABLE link_tags (
    link_id BIGINT NOT NULL REFERENCES links (id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (link_id, tag)
);

CREATE INDEX link_tags_tag_idx ON link_tags (tag, link_id);

CREATE TABLE applied_click_entries (
    stream TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, entry_id)
);

CREATE INDEX applied_click_entries_applied_at_idx
    ON applied_click_entries (applied_at);
