-- Runs once, when the postgres container initialises its (empty) volume: the serving database is POSTGRES_DB;
-- MLflow's backend store and Airflow's metadata get their own databases on the same server.
CREATE DATABASE mlflow;
CREATE DATABASE airflow;
