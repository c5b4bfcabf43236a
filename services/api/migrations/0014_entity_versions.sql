-- Per template, quota and nodegroup's settings: the stream sequence of the last event applied to it
-- (services/api/versions.py), so that an older one the API's copies apply late (an update after the template's
-- delete, or after a newer update) changes nothing.
CREATE TABLE entity_versions (
    kind text NOT NULL,
    key  text NOT NULL,
    seq  bigint NOT NULL,
    PRIMARY KEY (kind, key)
);
