-- Events that reach the projection before the cluster they are about, kept until its creation is applied
-- (services/api/parking.py). The API's copies share one durable consumer (ADR 0002): a batch held by a copy that
-- dies comes back only after the ack wait, while the other copy applies what follows it. A cluster's request can so
-- be applied after its admission, start and completion, which then found no row and were lost (make test's short
-- chaos form: acknowledged clusters never listed). This generalises migration 0010's refused_clusters (a
-- rejection or withdrawal applied before its request), whose table and triggers go: a parked rejection or
-- withdrawal is applied after the request like any other event.
-- No column is stamped with the wall clock: a replay parks the same events with the same values (cove verify).
CREATE TABLE parked_events (
    cluster_uuid text NOT NULL,
    event_id     text NOT NULL,
    stream_seq   bigint NOT NULL,
    occurred_at  timestamptz NOT NULL,
    envelope     bytea NOT NULL,
    PRIMARY KEY (cluster_uuid, event_id)
);
CREATE INDEX parked_events_occurred_at ON parked_events (occurred_at);

DROP TRIGGER clusters_refused ON clusters;
DROP TRIGGER nodegroups_refused ON nodegroups;
DROP FUNCTION refused_cluster_row();
DROP FUNCTION refused_cluster_nodegroup();
DROP TABLE refused_clusters;
