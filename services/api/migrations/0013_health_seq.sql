-- The stream sequence of the health report shown (services/api/projection.py ``health_changed``): reports are
-- published only on a change, so an older one the API's copies apply late (a copy killed holding it) would stay
-- shown until the next change. 0: none known.
ALTER TABLE clusters ADD COLUMN health_seq bigint NOT NULL DEFAULT 0;
