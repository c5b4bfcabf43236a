CREATE TABLE rejections (
    cluster_id text PRIMARY KEY,
    project_id text NOT NULL,
    times      integer NOT NULL,
    reasons    text NOT NULL
);
