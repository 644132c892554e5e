"""Model specs: `models.yaml` parsed into typed, validated objects.

Every error names the model and the key that is wrong, so a bad entry is reported by Airflow's DagBag
as an import error of the generated DAG file instead of crashing the DAG processor.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from croniter import croniter

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC_FILE = REPO_ROOT / "models.yaml"

_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
_QUALIFIED = re.compile(r"^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$")

FeatureType = Literal["int", "float", "category"]
Task = Literal["classification", "regression"]
ServingMode = Literal["batch", "online", "both"]

# metric name -> True when higher is better
METRICS: dict[str, bool] = {"roc_auc": True, "log_loss": False, "accuracy": True, "rmse": False, "mae": False}
CLASSIFICATION_METRICS = {"roc_auc", "log_loss", "accuracy"}


class SpecError(ValueError):
    """A models.yaml entry is invalid; the message names the model and the key."""


@dataclass(frozen=True)
class Feature:
    name: str
    type: FeatureType
    nullable: bool = False
    categories: tuple[str, ...] = ()

    def code_of(self, value: str) -> int | None:
        """Integer code of a category value (its position in the spec), None when unknown."""
        try:
            return self.categories.index(value)
        except ValueError:
            return None


@dataclass(frozen=True)
class Source:
    table: str
    entity_key: str
    date_column: str


@dataclass(frozen=True)
class TrainingConfig:
    history_days: int = 28
    holdout_days: int = 7
    min_rows: int = 1000


@dataclass(frozen=True)
class ServingConfig:
    mode: ServingMode = "batch"
    latency_budget_ms: float = 50.0

    @property
    def online(self) -> bool:
        return self.mode in ("online", "both")


@dataclass(frozen=True)
class BatchConfig:
    shards: int = 2
    reject_threshold: float = 0.01
    retention_days: int = 90
    chunk_rows: int = 100_000


@dataclass(frozen=True)
class ModelSpec:
    name: str
    task: Task
    source: Source
    features: tuple[Feature, ...]
    label: str
    metric: str
    prediction_table: str
    schedule: str
    train_schedule: str
    xgboost: dict[str, Any] = field(default_factory=dict)
    training: TrainingConfig = TrainingConfig()
    serving: ServingConfig = ServingConfig()
    batch: BatchConfig = BatchConfig()
    description: str = ""

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric]


_MODEL_KEYS = {
    "description", "task", "source", "features", "label", "metric", "xgboost", "training",
    "prediction_table", "schedule", "train_schedule", "serving", "batch",
}
_REQUIRED = {"task", "source", "features", "label", "metric", "prediction_table", "schedule"}
_SOURCE_KEYS = {"table", "entity_key", "date_column"}
_FEATURE_KEYS = {"name", "type", "nullable", "categories"}
_XGB_ALLOWED = {
    "n_estimators", "max_depth", "learning_rate", "subsample", "colsample_bytree", "min_child_weight",
    "gamma", "reg_alpha", "reg_lambda", "max_bin", "tree_method", "random_state",
}


def _fail(model: str, key: str, why: str) -> SpecError:
    return SpecError(f"models.yaml: model '{model}', key '{key}': {why}")


def _check_keys(model: str, where: str, data: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _fail(model, where, f"expected a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _fail(model, f"{where}.{unknown[0]}" if where else unknown[0],
                    f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return data


def _sub(model: str, key: str, data: Any, cls: type, allowed: set[str]) -> Any:
    if data is None:
        return cls()
    data = _check_keys(model, key, data, allowed)
    try:
        return cls(**data)
    except TypeError as exc:
        raise _fail(model, key, str(exc)) from exc


def _positive(model: str, key: str, value: Any, *, number: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if number is float else int) or value <= 0:
        raise _fail(model, key, f"must be a positive {number.__name__}, got {value!r}")


def _parse_feature(model: str, index: int, raw: Any) -> Feature:
    where = f"features[{index}]"
    raw = _check_keys(model, where, raw, _FEATURE_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not _IDENT.match(name):
        raise _fail(model, f"{where}.name", f"must be a lower-case SQL identifier, got {name!r}")
    ftype = raw.get("type")
    if ftype not in ("int", "float", "category"):
        raise _fail(model, f"{where}.type", f"feature '{name}': must be int, float or category, got {ftype!r}")
    categories = raw.get("categories", [])
    if ftype == "category":
        if not categories or not all(isinstance(c, str) for c in categories):
            raise _fail(model, f"{where}.categories", f"feature '{name}': a category needs a list of strings")
        if len(set(categories)) != len(categories):
            raise _fail(model, f"{where}.categories", f"feature '{name}': categories repeat")
    elif categories:
        raise _fail(model, f"{where}.categories", f"feature '{name}': only category features take categories")
    nullable = raw.get("nullable", False)
    if not isinstance(nullable, bool):
        raise _fail(model, f"{where}.nullable", f"feature '{name}': must be true or false")
    return Feature(name=name, type=ftype, nullable=nullable, categories=tuple(categories))


def _parse_model(name: str, raw: Any) -> ModelSpec:
    if not _IDENT.match(name):
        raise _fail(name, "name", "model names must be lower-case identifiers (they name DAGs and tables)")
    raw = _check_keys(name, "", raw, _MODEL_KEYS)
    missing = sorted(_REQUIRED - set(raw))
    if missing:
        raise _fail(name, missing[0], "missing required key")

    task = raw["task"]
    if task not in ("classification", "regression"):
        raise _fail(name, "task", f"must be classification or regression, got {task!r}")

    src = _check_keys(name, "source", raw["source"], _SOURCE_KEYS)
    for key in sorted(_SOURCE_KEYS):
        if key not in src:
            raise _fail(name, f"source.{key}", "missing required key")
    if not _QUALIFIED.match(str(src["table"])):
        raise _fail(name, "source.table", f"must be schema.table, got {src['table']!r}")
    for key in ("entity_key", "date_column"):
        if not _IDENT.match(str(src[key])):
            raise _fail(name, f"source.{key}", f"must be a column name, got {src[key]!r}")
    source = Source(**src)

    if not isinstance(raw["features"], list) or not raw["features"]:
        raise _fail(name, "features", "must be a non-empty list")
    features = tuple(_parse_feature(name, i, f) for i, f in enumerate(raw["features"]))
    names = [f.name for f in features]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _fail(name, "features", f"feature '{dupes[0]}' is listed twice")
    reserved = {source.entity_key, source.date_column}
    if reserved & set(names):
        raise _fail(name, "features", f"'{sorted(reserved & set(names))[0]}' is the entity key or date column")

    label = raw["label"]
    if not isinstance(label, str) or not _IDENT.match(label) or label in names:
        raise _fail(name, "label", f"must be a column name that is not a feature, got {label!r}")

    metric = raw["metric"]
    if metric not in METRICS:
        raise _fail(name, "metric", f"must be one of {', '.join(METRICS)}, got {metric!r}")
    if (metric in CLASSIFICATION_METRICS) != (task == "classification"):
        raise _fail(name, "metric", f"'{metric}' does not fit a {task} model")

    if not _QUALIFIED.match(str(raw["prediction_table"])):
        raise _fail(name, "prediction_table", f"must be schema.table, got {raw['prediction_table']!r}")

    schedule = raw["schedule"]
    train_schedule = raw.get("train_schedule", "@weekly")
    for key, cron in (("schedule", schedule), ("train_schedule", train_schedule)):
        if not isinstance(cron, str) or not (cron.startswith("@") or croniter.is_valid(cron)):
            raise _fail(name, key, f"not a valid cron expression: {cron!r}")

    params = raw.get("xgboost") or {}
    params = _check_keys(name, "xgboost", params, _XGB_ALLOWED)

    training = _sub(name, "training", raw.get("training"), TrainingConfig, {"history_days", "holdout_days", "min_rows"})
    for key in ("history_days", "holdout_days", "min_rows"):
        _positive(name, f"training.{key}", getattr(training, key))
    if training.holdout_days >= training.history_days:
        raise _fail(name, "training.holdout_days", "must be shorter than training.history_days")

    serving = _sub(name, "serving", raw.get("serving"), ServingConfig, {"mode", "latency_budget_ms"})
    if serving.mode not in ("batch", "online", "both"):
        raise _fail(name, "serving.mode", f"must be batch, online or both, got {serving.mode!r}")
    _positive(name, "serving.latency_budget_ms", serving.latency_budget_ms, number=float)

    batch = _sub(name, "batch", raw.get("batch"), BatchConfig,
                 {"shards", "reject_threshold", "retention_days", "chunk_rows"})
    for key in ("shards", "retention_days", "chunk_rows"):
        _positive(name, f"batch.{key}", getattr(batch, key))
    if not isinstance(batch.reject_threshold, (int, float)) or not 0 <= batch.reject_threshold <= 1:
        raise _fail(name, "batch.reject_threshold", f"must be a fraction in [0, 1], got {batch.reject_threshold!r}")

    return ModelSpec(
        name=name, task=task, source=source, features=features, label=label, metric=metric,
        prediction_table=raw["prediction_table"], schedule=schedule, train_schedule=train_schedule,
        xgboost=dict(params), training=training, serving=serving, batch=batch,
        description=str(raw.get("description", "")),
    )


def parse_specs(document: Any) -> dict[str, ModelSpec]:
    if not isinstance(document, dict) or set(document) != {"models"} or not isinstance(document["models"], dict):
        raise SpecError("models.yaml: the top level must be a single 'models' mapping")
    return {name: _parse_model(str(name), raw) for name, raw in document["models"].items()}


def spec_file() -> Path:
    return Path(os.environ.get("MODELS_FILE", DEFAULT_SPEC_FILE))


def load_specs(path: str | Path | None = None) -> dict[str, ModelSpec]:
    """All model specs, validated. Raises SpecError naming the model and key on any problem."""
    path = Path(path) if path else spec_file()
    with open(path) as fh:
        return parse_specs(yaml.safe_load(fh))


def load_spec(name: str, path: str | Path | None = None) -> ModelSpec:
    specs = load_specs(path)
    if name not in specs:
        raise SpecError(f"models.yaml: no model named '{name}' (known: {', '.join(sorted(specs))})")
    return specs[name]
