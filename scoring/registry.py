"""MLflow model registry access: which version serves, and loading a version's booster."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import xgboost as xgb
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"  # scored in shadow beside the champion (set by the gate or by hand)
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


# The classes MLflow's xgboost flavour records for the models this platform trains; anything else is refused.
KNOWN_MODEL_CLASSES = frozenset({"xgboost.core.Booster", "xgboost.sklearn.XGBClassifier",
                                 "xgboost.sklearn.XGBRegressor"})
_BOOSTER_FORMATS = frozenset({"ubj", "json"})
APPROVED = "promoted"  # the gate's `gate.decision` tag on a version it promoted


class UnsafeArtifactError(RegistryError):
    """A version's artifact is not a plain XGBoost booster this platform would load (refused, never imported)."""


class NotApprovedError(RegistryError):
    """A version the promotion gate did not approve (refused at load unless explicitly overridden)."""


def load_booster(model_name: str, version: str) -> xgb.Booster:
    """The native booster of a registered version, read from its booster file.

    Not `mlflow.xgboost.load_model`: that puts the artifact's `code` folder on sys.path and instantiates the
    class its MLmodel names, so whoever can write an artifact could run code here. This reads the MLmodel as
    data, accepts only known XGBoost classes and booster formats, refuses any `code`, and hands XGBoost the file.
    """
    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory(prefix="booster-") as tmp:
        try:
            local = Path(download_artifacts(artifact_uri=f"models:/{model_name}/{version}", dst_path=tmp))
        except MlflowException as exc:
            raise RegistryError(f"cannot load model '{model_name}' version {version}: {exc}") from exc
        except Exception as exc:
            raise RegistryError(f"MLflow is unreachable loading '{model_name}' version {version}: {exc}") from exc
        return read_booster_artifact(local, f"model '{model_name}' version {version}")


def read_booster_artifact(local: Path, what: str) -> xgb.Booster:
    """The booster in a downloaded MLflow xgboost model directory, after checking its MLmodel (see load_booster)."""
    try:
        mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UnsafeArtifactError(f"{what}: no readable MLmodel file: {exc}") from exc
    flavors = mlmodel.get("flavors") if isinstance(mlmodel, dict) else None
    flavor = flavors.get("xgboost") if isinstance(flavors, dict) else None
    if not isinstance(flavor, dict):
        raise UnsafeArtifactError(f"{what}: not logged with MLflow's xgboost flavour")
    if flavor.get("model_class") not in KNOWN_MODEL_CLASSES:
        raise UnsafeArtifactError(f"{what}: model_class {flavor.get('model_class')!r} is not one of "
                                  f"{sorted(KNOWN_MODEL_CLASSES)}")
    if any(isinstance(f, dict) and f.get("code") for f in flavors.values()) or (local / "code").exists():
        raise UnsafeArtifactError(f"{what}: carries a 'code' folder; model code is never loaded")
    if flavor.get("model_format") not in _BOOSTER_FORMATS:
        raise UnsafeArtifactError(f"{what}: model_format {flavor.get('model_format')!r} is not one of "
                                  f"{sorted(_BOOSTER_FORMATS)}")
    data = flavor.get("data")
    path = (local / data).resolve() if isinstance(data, str) else None
    if path is None or not path.is_relative_to(local.resolve()) or not path.is_file():
        raise UnsafeArtifactError(f"{what}: booster file {data!r} is missing or outside the artifact")
    try:
        return xgb.Booster(model_file=str(path))
    except xgb.core.XGBoostError as exc:
        raise UnsafeArtifactError(f"{what}: XGBoost cannot read {data}: {exc}") from exc


def version_tags(model_name: str, version: str, mlflow_client: MlflowClient | None = None) -> dict[str, str]:
    """A registered version's tags (the gate's decision and figures)."""
    mc = mlflow_client or client()
    try:
        return dict(mc.get_model_version(model_name, version).tags or {})
    except MlflowException as exc:
        raise RegistryError(f"cannot read model '{model_name}' version {version}: {exc}") from exc
    except Exception as exc:
        raise RegistryError(f"MLflow is unreachable reading '{model_name}' version {version}: {exc}") from exc


def check_approved(model_name: str, version: str, *, mlflow_client: MlflowClient | None = None,
                   allow_ungated: bool = False) -> None:
    """Raise NotApprovedError unless the gate promoted `version` (its `gate.decision` tag is `promoted`).

    Whoever can move an alias cannot thereby bypass the gate: serving and the async workers load only approved
    versions. `allow_ungated` (SERVING_ALLOW_UNGATED) is the documented escape hatch for hand-registered models.
    """
    if allow_ungated:
        return
    decision = version_tags(model_name, version, mlflow_client).get("gate.decision")
    if decision != APPROVED:
        raise NotApprovedError(f"model '{model_name}' version {version} was not promoted by the gate "
                               f"(gate.decision={decision!r}); set SERVING_ALLOW_UNGATED=true to serve it anyway")
