-- Cluster PATCH of /health_status_reason (issue 4): a dict of strings, shown as Magnum's health_status_reason.
ALTER TABLE clusters ADD COLUMN health_status_reason jsonb NOT NULL DEFAULT '{}';
-- Templates listed by a hidden/public filter for non-admins (own project ∪ public & not hidden).
CREATE INDEX cluster_templates_public ON cluster_templates (public, hidden);
