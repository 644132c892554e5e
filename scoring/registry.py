"""MLflow model registry access: which version serves, whether the gate approved it, and loading its booster.

Every failure is raised as a typed RegistryError (AliasNotFoundError, VersionNotFoundError, RegistryUnavailableError,
NotApprovedError, UnsafeArtifactError), decided from MLflow's exception classes and error codes and from the
requests exceptions under them, never from the text of a message (which an MLflow release may reword).
`resolve_approved` is the one resolve-and-approve rule the predict DAG, the batch CLI, serving and the async worker
use.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import requests
import xgboost as xgb
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"  # scored in shadow beside the champion (set by the gate or by hand)
GATE_DECISION = "gate.decision"  # the gate's tag on a version: promoted, refused or pending
UNGATED_OVERRIDE = "SERVING_ALLOW_UNGATED"

# MLflow error codes (MlflowException.error_code) that say "there is no such thing"...
_MISSING_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"})
# ...and "the server is there but cannot answer now" (a 503 without a JSON body).
_UNAVAILABLE_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "WORKSPACE_TEMPORARILY_UNAVAILABLE"})
# What the HTTP layer raises when MLflow cannot be reached; MLflow chains it under its own MlflowException.
_CONNECTION_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                      requests.exceptions.RetryError, ConnectionError, TimeoutError)


class RegistryError(RuntimeError):
    """The registry cannot give what was asked; the subclass says why."""


class AliasNotFoundError(RegistryError):
    """The model has no version with that alias (or the model is not registered at all)."""


class VersionNotFoundError(RegistryError):
    """The model has no such version."""


class RegistryUnavailableError(RegistryError):
    """MLflow cannot be reached or cannot answer now: worth retrying, never the version's fault."""


def client() -> MlflowClient:
    # The tracking URI comes from MLFLOW_TRACKING_URI, as for every MLflow client.
    return MlflowClient()


def _unreachable(exc: BaseException) -> bool:
    """True when `exc`, or an exception it was raised from or during, is a connection failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _CONNECTION_ERRORS):
            return True
        if isinstance(current, MlflowException) and current.error_code in _UNAVAILABLE_CODES:
            return True
        current = current.__cause__ or current.__context__
    return False


def is_missing(exc: BaseException) -> bool:
    """True for MLflow's "no such resource" answer (by error code)."""
    return isinstance(exc, MlflowException) and exc.error_code in _MISSING_CODES


def raise_typed(exc: Exception, what: str, missing: type[RegistryError] = RegistryError) -> NoReturn:
    """Re-raise an exception of an MLflow call about `what` as the typed RegistryError it means."""
    if isinstance(exc, RegistryError):
        raise exc
    if _unreachable(exc):
        raise RegistryUnavailableError(f"MLflow is unreachable while reading {what}: {exc}") from exc
    if is_missing(exc):
        raise missing(f"{what} does not exist in the registry") from exc
    raise RegistryError(f"MLflow registry error reading {what}: {exc}") from exc


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
    no_alias = f"model '{model_name}' has no version with alias '{ref}' (train and promote one first)"
    try:
        # The registered model lists its aliases: a missing alias is a missing key, not an error to interpret.
        aliases = mc.get_registered_model(model_name).aliases or {}
    except Exception as exc:
        if is_missing(exc) and not _unreachable(exc):
            raise AliasNotFoundError(f"{no_alias}; the model is not registered") from exc
        raise_typed(exc, f"model '{model_name}'")
    if ref not in aliases:
        raise AliasNotFoundError(no_alias)
    return str(aliases[ref])


# The classes MLflow's xgboost flavour records for the models this platform trains; anything else is refused.
KNOWN_MODEL_CLASSES = frozenset({"xgboost.core.Booster", "xgboost.sklearn.XGBClassifier",
                                 "xgboost.sklearn.XGBRegressor"})
_BOOSTER_FORMATS = frozenset({"ubj", "json"})
APPROVED = "promoted"  # the gate's `gate.decision` tag on a version it promoted


class UnsafeArtifactError(RegistryError):
    """A version's artifact is not a plain XGBoost booster this platform would load (refused, never imported)."""


class NotApprovedError(RegistryError):
    """A version the promotion gate did not approve (refused at load unless explicitly overridden)."""

    def __init__(self, message: str, *, version: str | None = None, decision: str | None = None) -> None:
        super().__init__(message)
        self.version = version
        self.decision = decision


@contextmanager
def downloaded(model_name: str, version: str) -> Iterator[Path]:
    """A registered version's model directory, downloaded into a temporary directory for the block's duration."""
    from mlflow.artifacts import download_artifacts

    what = f"model '{model_name}' version {version}"
    with tempfile.TemporaryDirectory(prefix="booster-") as tmp:
        try:
            local = Path(download_artifacts(artifact_uri=f"models:/{model_name}/{version}", dst_path=tmp))
        except Exception as exc:
            raise_typed(exc, what, VersionNotFoundError)
        yield local


def load_booster(model_name: str, version: str) -> xgb.Booster:
    """The native booster of a registered version, read from its booster file.

    Not `mlflow.xgboost.load_model`: that puts the artifact's `code` folder on sys.path and instantiates the
    class its MLmodel names, so whoever can write an artifact could run code here. This reads the MLmodel as
    data, accepts only known XGBoost classes and booster formats, refuses any `code`, and hands XGBoost the file.
    """
    with downloaded(model_name, version) as local:
        return read_booster_artifact(local, f"model '{model_name}' version {version}")


def read_mlmodel(local: Path) -> dict | None:
    """The MLmodel document of a model directory, read as data (None when missing or not YAML)."""
    try:
        doc = yaml.safe_load((local / "MLmodel").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return doc if isinstance(doc, dict) else None


def artifact_problems(local: Path) -> tuple[list[str], Path | None]:
    """Why the model directory is not a plain XGBoost booster this platform loads (every reason), and the booster
    file when there is none."""
    mlmodel = read_mlmodel(local)
    if mlmodel is None:
        return ["no readable MLmodel file"], None
    flavors = mlmodel.get("flavors")
    flavor = flavors.get("xgboost") if isinstance(flavors, dict) else None
    if not isinstance(flavor, dict):
        return ["not logged with MLflow's xgboost flavour (mlflow.xgboost.log_model)"], None
    problems = []
    if flavor.get("model_class") not in KNOWN_MODEL_CLASSES:
        problems.append(f"model_class {flavor.get('model_class')!r} is not one of {sorted(KNOWN_MODEL_CLASSES)}")
    if any(isinstance(f, dict) and f.get("code") for f in flavors.values()) or (local / "code").exists():
        problems.append("carries a 'code' folder; model code is never loaded")
    if flavor.get("model_format") not in _BOOSTER_FORMATS:
        problems.append(f"model_format {flavor.get('model_format')!r} is not one of {sorted(_BOOSTER_FORMATS)}")
    data = flavor.get("data")
    path = (local / data).resolve() if isinstance(data, str) else None
    if path is None or not path.is_relative_to(local.resolve()) or not path.is_file():
        problems.append(f"booster file {data!r} is missing or outside the artifact")
        path = None
    return problems, (None if problems else path)


def read_booster_artifact(local: Path, what: str) -> xgb.Booster:
    """The booster in a downloaded MLflow xgboost model directory, after checking its MLmodel (see load_booster)."""
    problems, path = artifact_problems(local)
    if problems or path is None:
        raise UnsafeArtifactError(f"{what}: {'; '.join(problems)}")
    try:
        return xgb.Booster(model_file=str(path))
    except xgb.core.XGBoostError as exc:
        raise UnsafeArtifactError(f"{what}: XGBoost cannot read {path.name}: {exc}") from exc


def version_tags(model_name: str, version: str, mlflow_client: MlflowClient | None = None) -> dict[str, str]:
    """The tags of a registered version (VersionNotFoundError when there is no such version)."""
    mc = mlflow_client or client()
    try:
        return dict(mc.get_model_version(model_name, str(version)).tags or {})
    except Exception as exc:
        raise_typed(exc, f"model '{model_name}' version {version}", VersionNotFoundError)


def check_approved(model_name: str, version: str, *, mlflow_client: MlflowClient | None = None,
                   allow_ungated: bool = False) -> str | None:
    """Raise NotApprovedError unless the gate promoted `version` (its `gate.decision` tag is `promoted`); returns
    the decision. The version must exist even with `allow_ungated` (VersionNotFoundError otherwise).

    Whoever can move an alias cannot thereby bypass the gate: every path loads only approved versions.
    `allow_ungated` (SERVING_ALLOW_UNGATED) is the documented escape hatch for hand-registered models.
    """
    decision = version_tags(model_name, version, mlflow_client).get(GATE_DECISION)
    if decision != APPROVED and not allow_ungated:
        why = "has no gate decision" if decision is None else f"was {decision} by the gate"
        raise NotApprovedError(f"model '{model_name}' version {version} was not promoted by the gate: it {why} "
                               f"(gate.decision={decision!r}); run evaluate_{model_name} with "
                               f"{{\"version\": \"{version}\"}} to judge it, or set {UNGATED_OVERRIDE}=true "
                               f"to use it anyway", version=str(version), decision=decision)
    return decision


@dataclass(frozen=True)
class Resolved:
    """A version some path may use: what `ref` resolved to, its gate decision, and whether only the override
    (SERVING_ALLOW_UNGATED) lets it through."""

    model: str
    ref: str
    version: str
    decision: str | None
    ungated: bool

    def describe(self) -> str:
        said = f"'{self.ref}' resolves to version {self.version}"
        if self.ungated:
            return (f"{said}, which the gate did not promote (gate.decision={self.decision!r}): used anyway "
                    f"because {UNGATED_OVERRIDE}=true")
        return f"{said} (promoted by the gate)"


def resolve_approved(model_name: str, ref: str | int = CHAMPION, *, allow_ungated: bool | None = None,
                     mlflow_client: MlflowClient | None = None) -> Resolved:
    """The one resolve-and-approve rule of every path (predict DAG, batch CLI, serving, async worker): resolve
    `ref`, then refuse the version unless the gate promoted it. `allow_ungated` defaults to the setting
    SERVING_ALLOW_UNGATED. Raises AliasNotFoundError, VersionNotFoundError, RegistryUnavailableError or
    NotApprovedError (whose message says what `ref` resolved to), each a RegistryError."""
    if allow_ungated is None:
        from scoring.settings import CoreSettings

        allow_ungated = CoreSettings.from_env().allow_ungated
    mc = mlflow_client or client()
    version = resolve_version(model_name, ref, mc)
    prefix = f"'{ref}' resolves to version {version}: "
    try:
        decision = check_approved(model_name, version, mlflow_client=mc, allow_ungated=allow_ungated)
    except NotApprovedError as exc:
        raise NotApprovedError(prefix + str(exc), version=version, decision=exc.decision) from None
    except VersionNotFoundError as exc:
        raise VersionNotFoundError(prefix + str(exc)) from exc
    return Resolved(model_name, str(ref), version, decision, decision != APPROVED)
