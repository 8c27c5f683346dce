-- Faasm's API (API.md section 6, seeds/faasm-http-api.txt). Never edit this file once landed.

-- State values: bytes per user (a function's namespace) and key, shared by all the user's
-- functions and calls, and by `PUT|GET /s/{user}/{key}`.
CREATE TABLE faasm_state (
    user       TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (user, key)
);

-- Faasm's call ids are numbers: each async call and chained call gets one, mapped to its
-- task.
CREATE TABLE faasm_calls (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id    TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);

-- Files uploaded with `PUT /file` (`FilePath` header): placed, read-only, in the containers
-- of Faasm functions. `seq` grows with every upload, so a container knows what it lacks.
CREATE TABLE faasm_files (
    path       TEXT PRIMARY KEY,
    data       BLOB NOT NULL,
    seq        INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
