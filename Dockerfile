# One image for the whole platform (docker-compose.yaml runs it as postgres-migrations, MLflow, every Airflow
# component and Celery worker, the serving replicas per model, the async worker per model and the gateway).
# The base is the official python:3.11-slim; PYTHON_BASE_IMAGE (a build argument, from .env in docker-compose.yaml)
# names a mirror or an in-house copy of it instead.
ARG PYTHON_BASE_IMAGE=python:3.11-slim
FROM ${PYTHON_BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GIT_PYTHON_REFRESH=quiet \
    AIRFLOW_HOME=/opt/airflow

# libgomp1: XGBoost's OpenMP runtime (not in the slim base image). postgresql-client: the batch job streams
# features out through psql's COPY (scoring/pgcopy.py), ~20x less CPU than reading COPY rows in Python.
# nginx-light: the gateway service (stack/gateway.py writes its config from models.yaml and runs it).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 postgresql-client nginx-light \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/platform

# Dependencies first (exact pins: requirements.txt is the constraint set), so code changes reuse this layer.
# Build arguments pip reads from the environment: PIP_INDEX_URL, another index (a company mirror); PIP_FIND_LINKS,
# a wheelhouse URL, then installed from alone (--no-index): the air-gapped build (`pip wheel -r requirements.txt
# setuptools` on a host that has an index); PIP_TRUSTED_HOST, the host of a plain-HTTP index or wheelhouse.
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_FIND_LINKS=
ARG PIP_TRUSTED_HOST=
COPY requirements.txt ./
RUN pip install ${PIP_FIND_LINKS:+--no-index} -r requirements.txt

COPY pyproject.toml models.yaml ./
COPY scoring/ scoring/
COPY serving/ serving/
COPY stack/ stack/
COPY sql/ sql/
COPY dags/ dags/
COPY plugins/ plugins/
COPY mlflow/ mlflow/
# Editable: the core finds models.yaml and sql/ next to its package, as in a checkout.
RUN pip install ${PIP_FIND_LINKS:+--no-index} --no-deps -e . && python -c "import scoring.spec as s; s.load_specs()"

# An unprivileged user (uid 50000, as in Airflow's images); the folders that named volumes mount over are its.
# (A fresh named volume takes the owner of the folder it is mounted on: a folder missing here would be root's.)
RUN useradd --uid 50000 --gid 0 --home-dir /opt/airflow --create-home platform \
    && mkdir -p /opt/airflow/logs /opt/airflow/auth /opt/mlartifacts /opt/mlflow-auth \
    && chown -R 50000:0 /opt/airflow /opt/mlartifacts /opt/mlflow-auth
USER 50000

CMD ["python", "-m", "scoring.migrate"]
