-- A running task's output is stored as it comes; these count the raw bytes of each stream
-- stored so far, so a restarted server asks the container's agent for the rest from there.
-- Never edit this file once landed.
ALTER TABLE tasks ADD COLUMN stdout_bytes INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN stderr_bytes INTEGER NOT NULL DEFAULT 0;
