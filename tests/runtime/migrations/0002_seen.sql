ALTER TABLE rejections ADD COLUMN last_event_id text;
