-- The trust reaper asks, per trust to delete, whether a cluster still acts with it and when a cluster was last
-- created with it (the API shares a trust among a user's clusters: proto/trusts.py).
CREATE INDEX clusters_trust ON clusters (trust_id);
CREATE INDEX clusters_spec_trust ON clusters ((spec->>'trust_id'));
