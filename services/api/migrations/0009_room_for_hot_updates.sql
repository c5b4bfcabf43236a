-- Clusters, their nodes and nodegroups are updated far more often than they are inserted (status moves, addresses,
-- health), and none of those updates changes an indexed column. With pages kept 30 % free, PostgreSQL can write the
-- new row version on the same page without touching any index (a HOT update): a replay of the stream updated each
-- cluster's row about 8 times, each update writing to the table's four indexes. New pages only; VACUUM FULL
-- rewrites old ones.
ALTER TABLE clusters SET (fillfactor = 70);
ALTER TABLE nodes SET (fillfactor = 70);
ALTER TABLE nodegroups SET (fillfactor = 70);
