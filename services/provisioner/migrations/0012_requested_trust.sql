-- The trust reaper asks when a cluster was last created with a trust (clusters_spec_trust, 0004): it read the trust
-- and the time out of the stored request, through an index on spec->>'trust_id' that every update moving a
-- cluster's status (not a HOT update: status is indexed) evaluated again, taking the request out of TOAST. Two
-- columns, written with the request, say the same (a tenth of a provisioner replay's time).
ALTER TABLE clusters ADD COLUMN requested_trust_id text, ADD COLUMN requested_at timestamptz;
UPDATE clusters SET requested_trust_id = spec->>'trust_id', requested_at = (spec->>'requested_at')::timestamptz
  WHERE spec IS NOT NULL;
DROP INDEX clusters_spec_trust;
CREATE INDEX clusters_requested_trust ON clusters (requested_trust_id);
