-- The stream sequence of the event that last moved (or kept) the cluster's status (services/api/parking.py): an event
-- older than it is superseded, as the stream order would have it overwritten (a resize's request applied after its
-- completion left UPDATE_IN_PROGRESS for ever); a newer one that does not apply from the status yet is parked until it
-- does. 0: none known (rows from before this migration, events applied without a sequence).
ALTER TABLE clusters ADD COLUMN status_seq bigint NOT NULL DEFAULT 0;
