-- One PostgreSQL role per component, each with only what it does (issue 13). No passwords here: the deployment
-- sets them at init from its secrets (scoring/roles.py, run by `python -m scoring.migrate`; hashed client-side).
--
--   platform_batch    batch scoring, training and monitoring (Airflow tasks): reads features, owns the
--                     prediction tables (it creates, swaps and drops their partitions), writes its ops rows
--                     (batch runs, shards, rejects, monitoring checks) and runs the queue's maintenance
--   platform_serving  the online app: reads predictions, features and batch runs; submits, reads and cancels jobs
--   platform_worker   the async worker: claims, renews, finishes and releases jobs
--   platform_airflow  owns the `airflow` database (Airflow's metadata) and nothing else
--   platform_mlflow   owns the `mlflow` database (MLflow's backend store) and nothing else
--
-- A later migration that adds a table grants it explicitly (nothing here is granted on future ops tables).
-- The prediction tables made from models.yaml after the migrations are handed to platform_batch and made readable
-- by platform_serving by scoring/roles.py (`grant_prediction_tables`), on every migrate run.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['platform_batch', 'platform_serving', 'platform_worker', 'platform_airflow',
                             'platform_mlflow'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT', r);
        END IF;
    END LOOP;
END $$;

-- This database: only the platform's roles may connect (not every role of the server).
DO $$
BEGIN
    EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO platform_batch, platform_serving, platform_worker',
                   current_database());
END $$;

-- MLflow's and Airflow's databases (beside this one on the same server), when they exist: each owned by its
-- component's role, and nobody else may connect (the serving role cannot read another database).
DO $$
DECLARE
    db text;
BEGIN
    FOR db IN SELECT datname FROM pg_database WHERE datname IN ('mlflow', 'airflow') LOOP
        EXECUTE format('ALTER DATABASE %I OWNER TO %I', db, 'platform_' || db);
        EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', db);
        EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', db, 'platform_' || db);
    END LOOP;
END $$;

-- Nobody creates objects in public; the apps use the platform's schemas only.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- features: read by training, batch and the live fallback (loading features is the feature pipeline's job).
GRANT USAGE ON SCHEMA features TO platform_batch, platform_serving;
GRANT SELECT ON ALL TABLES IN SCHEMA features TO platform_batch, platform_serving;
ALTER DEFAULT PRIVILEGES IN SCHEMA features GRANT SELECT ON TABLES TO platform_batch, platform_serving;

-- predictions: the batch creates tables there (staging, shadow); serving reads (grants per table: roles.py).
GRANT USAGE, CREATE ON SCHEMA predictions TO platform_batch;
GRANT USAGE ON SCHEMA predictions TO platform_serving;
ALTER DEFAULT PRIVILEGES FOR ROLE platform_batch IN SCHEMA predictions GRANT SELECT ON TABLES TO platform_serving;

-- ops: table by table.
GRANT USAGE ON SCHEMA ops TO platform_batch, platform_serving, platform_worker;
GRANT SELECT, INSERT, UPDATE ON ops.batch_runs, ops.batch_shards TO platform_batch;
GRANT SELECT, INSERT, DELETE ON ops.prediction_rejects TO platform_batch;
GRANT SELECT, INSERT, UPDATE, DELETE ON ops.monitoring_checks TO platform_batch;
GRANT USAGE ON SEQUENCE ops.batch_runs_id_seq, ops.prediction_rejects_id_seq TO platform_batch;
GRANT SELECT, UPDATE, DELETE ON ops.prediction_jobs TO platform_batch;  -- queue maintenance: expiry, retention
GRANT SELECT ON ops.batch_runs TO platform_serving;
GRANT SELECT, INSERT, UPDATE ON ops.prediction_jobs TO platform_serving;  -- submit, read, cancel
GRANT SELECT, UPDATE ON ops.prediction_jobs TO platform_worker;  -- claim, renew, finish, release
