"""Airflow-side glue over the `scoring` core: hooks and task helpers shared by the generated DAGs."""
