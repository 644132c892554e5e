"""MLflow's users, one per client, and their grants, on a server running MLflow's basic-auth app
(`python -m stack.mlflow_auth`: the compose job mlflow-init, as MLflow's admin via MLFLOW_TRACKING_USERNAME/PASSWORD).

    airflow   trains, registers versions, writes gate tags, moves champion/challenger: MANAGE on each model of
              models.yaml (and on the experiments it creates, as their creator)
    serving   reads registered models (the basic-auth default permission, READ, set in mlflow/basic_auth.ini)
    worker    the same

Idempotent: users that exist get their password re-set from the environment (MLFLOW_<USER>_PASSWORD), so a
rotated secret takes effect on the next run.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from scoring.settings import CoreSettings, env_names, load, setting
from scoring.spec import load_specs


@dataclass(frozen=True)
class UserPasswords:
    """Each MLflow user's password (field name = user name); unset: the user is not created."""

    airflow: str | None = setting("MLFLOW_AIRFLOW_PASSWORD")
    serving: str | None = setting("MLFLOW_SERVING_PASSWORD")
    worker: str | None = setting("MLFLOW_WORKER_PASSWORD")


USERS = env_names(UserPasswords)  # user -> its variable
WRITER = "airflow"


def _missing(exc: MlflowException) -> bool:
    from scoring.registry import is_missing

    return is_missing(exc)  # by MLflow's error code, never by the message text


def ensure_users(tracking_uri: str, env: Mapping[str, str] | None = None,
                 models: list[str] | None = None) -> list[str]:
    """Create or update each user whose password is set, and grant the writer MANAGE on every model; returns
    the users handled."""
    from mlflow import MlflowClient
    from mlflow.server.auth.client import AuthServiceClient

    auth = AuthServiceClient(tracking_uri)
    done = []
    passwords = load(UserPasswords, env)
    for user in USERS:
        password = getattr(passwords, user)
        if not password:
            continue
        try:
            auth.get_user(user)
        except MlflowException as exc:
            if not _missing(exc):
                raise
            auth.create_user(user, password)
        else:
            auth.update_user_password(user, password)
        done.append(user)
    if WRITER in done:
        registry = MlflowClient(tracking_uri=tracking_uri)
        for name in models if models is not None else list(load_specs()):
            try:
                registry.create_registered_model(name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            try:
                auth.grant_user_permission(WRITER, "registered_model", name, "MANAGE")
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # granted by an earlier run
                    raise
    return done


def main() -> int:
    uri = CoreSettings.from_env().mlflow_tracking_uri
    if not uri:
        print("error: MLFLOW_TRACKING_URI is not set", file=sys.stderr)
        return 2
    try:
        users = ensure_users(uri)
    except MlflowException as exc:
        print(f"error: MLflow refused the user setup: {exc}", file=sys.stderr)
        return 1
    print(f"mlflow-init: users {', '.join(users) or '(none: no MLFLOW_<USER>_PASSWORD set)'} ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
