-- Every cluster create looks its template up, and templates change rarely: each API process caches the lookups
-- and drops them all when this tells it, at commit, that a template changed (services/api/freshness.py,
-- TemplateCache). One notification per changing transaction (PostgreSQL folds identical ones).

CREATE FUNCTION notify_templates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('cove_api_templates', '');
    RETURN NULL;
END $$;

CREATE TRIGGER cluster_templates_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON cluster_templates
    FOR EACH STATEMENT EXECUTE FUNCTION notify_templates();
