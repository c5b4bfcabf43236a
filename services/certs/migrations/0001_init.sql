-- The certs store, built only from ClusterCACreated / ClusterCADeleted (rebuilt by replaying the stream).
-- The CA private key is kept only encrypted with the certs master key (key_id names which one).

CREATE TABLE cluster_cas (
    cluster_id        text PRIMARY KEY,
    project_id        text NOT NULL,
    ca_cert_pem       text NOT NULL,
    encrypted_ca_key  bytea,
    key_id            text NOT NULL,
    created_at        timestamptz NOT NULL,
    deleted_at        timestamptz
);
