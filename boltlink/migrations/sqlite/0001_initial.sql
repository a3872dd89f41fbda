-- Create the links, tags, API keys and applied click entries tables.
--
-- Timestamps are ISO 8601 text in UTC with microseconds
-- (2025-01-31T12:00:00.000000+00:00): fixed width, so they sort as text.

CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    last_used_at TEXT
);

-- AUTOINCREMENT never reuses an id, so a list cursor (before_id) stays valid.
CREATE TABLE links (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    domain TEXT NOT NULL DEFAULT '',
    code TEXT NOT NULL,
    url TEXT NOT NULL,
    title TEXT,
    redirect_status INTEGER NOT NULL DEFAULT 302,
    expires_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT,
    clicks INTEGER NOT NULL DEFAULT 0,
    created_by INTEGER REFERENCES api_keys (id),
    CONSTRAINT links_domain_code_key UNIQUE (domain, code)
);

CREATE TABLE link_tags (
    link_id INTEGER NOT NULL REFERENCES links (id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (link_id, tag)
) WITHOUT ROWID;

CREATE INDEX link_tags_tag_idx ON link_tags (tag, link_id);

CREATE TABLE applied_click_entries (
    stream TEXT NOT NULL,
    entry_id TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    PRIMARY KEY (stream, entry_id)
) WITHOUT ROWID;

CREATE INDEX applied_click_entries_applied_at_idx
    ON applied_click_entries (applied_at);
