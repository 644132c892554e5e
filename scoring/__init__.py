"""The shared core: model specs, registry access, the scorer, storage, training, batch and queue.

No Airflow or Flask imports here: DAG tasks, gunicorn workers and the async worker all call into it.
"""
