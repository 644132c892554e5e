"""MLflow model registry access: which version serves, and loading a version's booster."""

from __future__ import annotations

import re

import xgboost as xgb
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
_CONNECTION_FAILURES = ("Max retries exceeded", "Failed to establish a new connection", "Connection refused")


class RegistryError(RuntimeError):
    """The registry cannot give what was asked (no such alias or version, or MLflow is unreachable)."""


def client() -> MlflowClient:
    # The tracking URI comes from MLFLOW_TRACKING_URI, as for every MLflow client.
    return MlflowClient()


def resolve_version(model_name: str, ref: str | int = CHAMPION, mlflow_client: MlflowClient | None = None) -> str:
    """A version number for `ref`: an alias (e.g. 'champion'), a version number, or 'models:/name@alias'."""
    ref = str(ref)
    match = re.fullmatch(r"models:/([^/@]+)(?:@([\w-]+)|/(\d+))", ref)
    if match:
        model_name, alias, version = match.groups()
        ref = alias or version
    if ref.isdigit():
        return ref
    mc = mlflow_client or client()
    try:
        return str(mc.get_model_version_by_alias(model_name, ref).version)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            raise RegistryError(f"model '{model_name}' has no version with alias '{ref}' "
                                f"(train and promote one first)") from exc
        if any(s in str(exc) for s in _CONNECTION_FAILURES):  # MLflow wraps connection errors in its own
            raise RegistryError(f"MLflow is unreachable while resolving '{model_name}@{ref}': {exc}") from exc
        raise RegistryError(f"MLflow registry error resolving '{model_name}@{ref}': {exc}") from exc
    except Exception as exc:  # connection errors surface as requests/urllib3 exceptions
        raise RegistryError(f"MLflow is unreachable while resolving '{model_name}@{ref}': {exc}") from exc


def load_booster(model_name: str, version: str) -> xgb.Booster:
    """The native booster of a registered version (logged with the xgboost flavour)."""
    import mlflow.xgboost

    try:
        model = mlflow.xgboost.load_model(f"models:/{model_name}/{version}")
    except MlflowException as exc:
        raise RegistryError(f"cannot load model '{model_name}' version {version}: {exc}") from exc
    except Exception as exc:
        raise RegistryError(f"MLflow is unreachable loading '{model_name}' version {version}: {exc}") from exc
    return model if isinstance(model, xgb.Booster) else model.get_booster()
