-- The Docker exec a running task is, so a restarted server can find out how it ended.
-- Never edit this file once landed.
ALTER TABLE tasks ADD COLUMN exec_id TEXT;
