-- Named functions (API.md section 5). Never edit this file once landed.

-- Every version of every function: its configuration (the deploy body without the code) and
-- its code bundle (a tar of the code directory). A replace adds a version.
CREATE TABLE function_versions (
    namespace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    runtime     TEXT NOT NULL,
    config      TEXT NOT NULL,
    code        BLOB NOT NULL,
    code_sha256 TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (namespace, name, version)
);

-- The functions that exist now, each pointing at its current version.
CREATE TABLE functions (
    namespace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);

-- Secrets, sealed with the key file beside the database (a copy of the database alone does
-- not reveal them).
CREATE TABLE secrets (
    name       TEXT PRIMARY KEY,
    nonce      BLOB NOT NULL,
    sealed     BLOB NOT NULL,
    updated_at TEXT NOT NULL
);

-- An invocation is a task: the function ("ns/name") and version it ran, the answer it gave
-- (JSON: status, content_type, headers, body[, encoding]) and, for a pipeline, its steps'
-- task ids (JSON array).
ALTER TABLE tasks ADD COLUMN function TEXT;
ALTER TABLE tasks ADD COLUMN function_version INTEGER;
ALTER TABLE tasks ADD COLUMN result TEXT;
ALTER TABLE tasks ADD COLUMN steps TEXT;
CREATE INDEX tasks_function ON tasks (function, num);
