-- Three CAs per cluster (issue 19): the etcd and front-proxy CAs beside the cluster CA (NULL for a cluster created
-- before). wrapped_by says what wrapped the CA keys: 'kek' (the key-encryption key named by key_id, before issue 19)
-- or 'data_key' (the cluster's data key named by key_id, kept in the key store <schema>_keys; docs/adr/0007).

ALTER TABLE cluster_cas
    ADD COLUMN etcd_ca_cert_pem              text,
    ADD COLUMN etcd_encrypted_ca_key         bytea,
    ADD COLUMN front_proxy_ca_cert_pem       text,
    ADD COLUMN front_proxy_encrypted_ca_key  bytea,
    ADD COLUMN wrapped_by                    text NOT NULL DEFAULT 'kek';
