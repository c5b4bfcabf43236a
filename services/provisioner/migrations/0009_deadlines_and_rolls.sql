-- Issue 13 (day 2): deadlines that survive a restart and rolls of every node.
-- update_started_at / delete_started_at: the times (from the events' envelopes) the current update or delete
-- started; its deadline is counted from them, never from a timer in memory.
-- ca_previous_pem: the CA a rotation replaced, trusted (besides the new one) by the masters booted while the
-- nodes roll onto the new CA; NULL once every node runs the new one (ClusterCATrustNarrowed).
-- nodegroups.roll_generation: bumped by every upgrade request of the group and every CA rotation; a server
-- booted at an older generation (its cove_roll metadata) is rolled (a same-version upgrade re-rolls every node).
ALTER TABLE clusters ADD COLUMN update_started_at timestamptz;
ALTER TABLE clusters ADD COLUMN delete_started_at timestamptz;
ALTER TABLE clusters ADD COLUMN ca_previous_pem text;
ALTER TABLE nodegroups ADD COLUMN roll_generation integer NOT NULL DEFAULT 0;
