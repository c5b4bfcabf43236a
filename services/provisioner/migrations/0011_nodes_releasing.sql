-- A deleted node whose volumes, floating IP and own port are not released yet (NodeDeleted sets it, NodeReleased
-- clears it): a task that resumes the cluster after its predecessor died in between releases them, and no new
-- worker takes the name meanwhile (services/provisioner/nodes.py). Nodes deleted before this migration count as
-- released.
ALTER TABLE nodes ADD COLUMN releasing boolean NOT NULL DEFAULT false;
