-- Roles fixed for the container deployment (issue 19); 007_roles.sql stays as applied.
--
-- 1. platform_airflow and platform_mlflow own their databases, but on PostgreSQL 15 a database owner may create
--    in its `public` schema only through its implicit membership of pg_database_owner (the schema's owner),
--    whose privileges a NOINHERIT role does not use: MLflow's and Airflow's first CREATE TABLE failed with
--    "permission denied for schema public". They are members of nothing else, so INHERIT grants them nothing more.
ALTER ROLE platform_airflow INHERIT;
ALTER ROLE platform_mlflow INHERIT;

-- 2. platform_features: the feature pipeline's role (a team's loader, the compose demo seeding). It owns the
--    feature tables (writing a day creates its partition of the parent, which takes the parent's owner) and
--    writes nothing else; batch and serving keep reading them. Its password: POSTGRES_FEATURES_PASSWORD.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'platform_features') THEN
        CREATE ROLE platform_features LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END $$;
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO platform_features', current_database());
END $$;
GRANT USAGE, CREATE ON SCHEMA features TO platform_features;
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'features' AND c.relkind IN ('r', 'p') LOOP
        EXECUTE format('ALTER TABLE features.%I OWNER TO platform_features', t.relname);
    END LOOP;
END $$;
GRANT SELECT ON ALL TABLES IN SCHEMA features TO platform_batch, platform_serving;
ALTER DEFAULT PRIVILEGES FOR ROLE platform_features IN SCHEMA features
    GRANT SELECT ON TABLES TO platform_batch, platform_serving;
