-- The dead-letter test's store: how many times each event was applied (tests/ops/test_dlq.py).
CREATE TABLE applied (
    event_id text PRIMARY KEY,
    times    integer NOT NULL
);
