"""Monitoring of the nightly predictions: reference profiles at training time, drift and quality checks per day,
challenger comparison and the report. Shared core: no Airflow and no Flask imports here."""
