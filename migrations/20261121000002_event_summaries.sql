-- Each event keeps the task's summary as it was at that change, so a replay shows history,
-- not the task's state now. Never edit this file once landed.
ALTER TABLE events ADD COLUMN task TEXT NOT NULL DEFAULT '{}';
