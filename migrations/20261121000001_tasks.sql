-- Tasks and their event log. Never edit this file once landed: add a new migration instead.

-- Server-wide facts, such as this database's instance id (the label its containers carry).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE tasks (
    -- Insertion order: "newest first" listing and paging use it, never the clock.
    num              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    task_name        TEXT NOT NULL,
    state            TEXT NOT NULL,
    image            TEXT NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    -- The spec as the user sent it (JSON, nulls dropped).
    spec             TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    exit_code        INTEGER,
    stdout           TEXT NOT NULL DEFAULT '',
    stderr           TEXT NOT NULL DEFAULT '',
    output_truncated INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    container_id     TEXT,
    container_state  TEXT,
    -- POST /fn/{id}: the task whose container this one asked for.
    reuse_of         TEXT,
    locality         TEXT
);

CREATE INDEX tasks_queue ON tasks (state, priority DESC, num);
CREATE INDEX tasks_name ON tasks (task_name, num);
CREATE INDEX tasks_container ON tasks (container_id);

-- Every state change, written in the same transaction as the change: `seq` is what
-- WebSocket subscribers resume from.
CREATE TABLE events (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    state   TEXT NOT NULL,
    at      TEXT NOT NULL
);

CREATE INDEX events_task ON events (task_id, seq);
