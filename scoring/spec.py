"""Model specs: `models.yaml` parsed into typed, validated objects.

Every error names the model and the key that is wrong, so a bad entry is reported by Airflow's DagBag
as an import error of the generated DAG file instead of crashing the DAG processor.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from croniter import croniter

from scoring.settings import CoreSettings

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


ExplainMethod = Literal["exact", "approx"]
EXPLAIN_ALL = "all"


@dataclass(frozen=True)
class ExplainConfig:
    """models.yaml `batch.explain`: the nightly run also stores, per explained entity, its `top_k` contributions.

    method  exact (TreeSHAP, XGBoost's pred_contribs) or approx (Saabas, ~50x cheaper, not consistent)
    rows    which rows are explained: "all", or the `top` N by score of the day (the default, 1,000: the
            riskiest customers an analyst asks about; one shard's cost is bounded whatever the day's size)
    """

    top_k: int = 3
    method: ExplainMethod = "exact"
    rows: str = "top"
    top: int = 1000

    @property
    def all_rows(self) -> bool:
        return self.rows == EXPLAIN_ALL


@dataclass(frozen=True)
class BatchConfig:
    shards: int = 2
    reject_threshold: float = 0.01
    retention_days: int = 90
    chunk_rows: int = 100_000
    explain: ExplainConfig | None = None  # None: the nightly run stores scores only


@dataclass(frozen=True)
class Threshold:
    """A monitoring check's limits: a value at or above `warn` warns, at or above `alert` alerts."""

    warn: float
    alert: float


@dataclass(frozen=True)
class MonitoringConfig:
    """Thresholds of the monitor_<model> DAG (models.yaml `monitoring:`; every key optional, defaults below).

    feature_psi          PSI of a feature's distribution today against the training window's
    null_rate_increase   a feature's null rate today minus its null rate in the training window
    reject_rate          share of the day's feature rows the batch run rejected
    row_count_change     |rows today - rows of the previous predicted day| / rows of the previous day
    score_psi            PSI of the day's scores against the held-out window's scores at training time
    score_psi_day        PSI of the day's scores against the previous predicted day's
    metric_degradation   relative loss of the realised metric against the held-out one, once labels are in
    attribution_drift    relative change of a feature's mean |contribution| today against the training window
                         (scoring/monitoring/attribution.py)
    label_lookback_days  how many earlier days get their realised metric computed once their labels arrive
    online_min_rows      logged online rows (ops.online_payloads) a day needs before its online drift is judged;
                         fewer are reported, not judged (a PSI over a handful of rows is noise)

    The online traffic's checks (online.psi.<feature>, online.null_rate_increase.<feature>,
    online.score_psi.holdout) use the same limits as the batch day's.
    """

    feature_psi: Threshold = Threshold(0.1, 0.25)
    null_rate_increase: Threshold = Threshold(0.02, 0.05)
    reject_rate: Threshold = Threshold(0.005, 0.01)
    row_count_change: Threshold = Threshold(0.1, 0.3)
    score_psi: Threshold = Threshold(0.1, 0.25)
    score_psi_day: Threshold = Threshold(0.1, 0.25)
    metric_degradation: Threshold = Threshold(0.05, 0.1)
    attribution_drift: Threshold = Threshold(0.25, 0.5)
    label_lookback_days: int = 7
    online_min_rows: int = 500


Sticky = Literal["none", "entity", "caller"]
STICKY_MODES: tuple[str, ...] = ("none", "entity", "caller")


@dataclass(frozen=True)
class RolloutConfig:
    """Limits of a canary's automatic rollback (models.yaml `rollout:`; every key optional, defaults below).

    While a canary serves a share of the live traffic (stack/rollout.py), it is compared with the champion over
    the same window (the last `window_minutes`, and only since its share was last moved); crossing any limit moves
    its share to 0 and records why (ops.rollout_events, an MLflow tag on the version, a log line).

    sticky               none: each request drawn at random; entity: the same X-Entity-ID header gets the same
                         version for a day; caller: the same Authorization (else client address) for a day
    window_minutes       how far back the evidence goes
    min_requests         canary requests in the window before its error rate and latency are judged
    error_rate_increase  canary 5xx share minus the champion's, at or above which it is rolled back
    p99_ratio            canary latency p99 over the champion's, at or above which (and at least
    p99_min_increase_ms  this many ms slower: p99 noise on a shared machine is a few ms) it is rolled back
    score_psi            PSI of the canary's logged scores against the champion's in the same window
    min_scores           logged scores (ops.online_payloads) of each before the PSI is judged
    metric_degradation   relative loss of the canary's realised metric against the champion's, once labels are in
    min_labels           labelled logged rows of each before the realised metric is judged
    """

    sticky: Sticky = "none"
    window_minutes: float = 15.0
    min_requests: int = 200
    error_rate_increase: float = 0.01
    p99_ratio: float = 1.5
    p99_min_increase_ms: float = 5.0
    score_psi: float = 0.25
    min_scores: int = 200
    metric_degradation: float = 0.1
    min_labels: int = 200


_ROLLOUT_COUNTS = ("min_requests", "min_scores", "min_labels")
_ROLLOUT_LIMITS = ("window_minutes", "error_rate_increase", "p99_ratio", "p99_min_increase_ms", "score_psi",
                   "metric_degradation")


MONITORING_THRESHOLDS = ("feature_psi", "null_rate_increase", "reject_rate", "row_count_change", "score_psi",
                         "score_psi_day", "metric_degradation", "attribution_drift")


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
    monitoring: MonitoringConfig = MonitoringConfig()
    rollout: RolloutConfig = RolloutConfig()
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
    "prediction_table", "schedule", "train_schedule", "serving", "batch", "monitoring", "rollout",
}
_REQUIRED = {"task", "source", "features", "label", "metric", "prediction_table", "schedule"}
_SOURCE_KEYS = {"table", "entity_key", "date_column"}
_FEATURE_KEYS = {"name", "type", "nullable", "categories"}
_CRON_PRESETS = {"@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly"}  # Airflow's presets


# The XGBoost parameters a spec (or a training run's overrides) may set, as JSON-schema rules: checked here, and
# handed to Airflow as the trigger form's schema so a bad override is refused when the run is triggered.
_UNIT = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
_NON_NEGATIVE = {"type": "number", "minimum": 0}
XGBOOST_PARAMS: dict[str, dict[str, Any]] = {
    "n_estimators": {"type": "integer", "minimum": 1}, "max_depth": {"type": "integer", "minimum": 0},
    "max_bin": {"type": "integer", "minimum": 2}, "random_state": {"type": "integer", "minimum": 0},
    "learning_rate": _UNIT, "subsample": _UNIT, "colsample_bytree": _UNIT,
    "min_child_weight": _NON_NEGATIVE, "gamma": _NON_NEGATIVE, "reg_alpha": _NON_NEGATIVE,
    "reg_lambda": _NON_NEGATIVE, "tree_method": {"enum": ["hist", "approx", "exact"]},
}
_XGB_ALLOWED = set(XGBOOST_PARAMS)


def _rule_problem(rule: dict[str, Any], v: Any) -> str | None:
    if "enum" in rule:
        return None if v in rule["enum"] else f"must be one of {', '.join(rule['enum'])}, got {v!r}"
    is_int = isinstance(v, int) and not isinstance(v, bool)
    ok = is_int if rule["type"] == "integer" else (is_int or (isinstance(v, float) and v == v))
    ok = ok and v >= rule.get("minimum", -np.inf) and v > rule.get("exclusiveMinimum", -np.inf)
    ok = ok and v <= rule.get("maximum", np.inf)
    if ok:
        return None
    if rule["type"] == "integer":
        return f"must be an integer >= {rule['minimum']}, got {v!r}"
    low = f"({rule['exclusiveMinimum']:g}" if "exclusiveMinimum" in rule else f"[{rule.get('minimum', 0):g}"
    high = f"{rule['maximum']:g}]" if "maximum" in rule else "inf)"
    return f"must be a number in {low}, {high}, got {v!r}"


def xgboost_param_problem(params: Any) -> tuple[str, str] | None:
    """(key, why) of the first invalid XGBoost parameter, or None when all are valid."""
    if not isinstance(params, dict):
        return "", f"expected a mapping of XGBoost parameters, got {type(params).__name__}"
    for key, value in params.items():
        if key not in XGBOOST_PARAMS:
            return str(key), f"unknown XGBoost parameter (allowed: {', '.join(sorted(XGBOOST_PARAMS))})"
        why = _rule_problem(XGBOOST_PARAMS[key], value)
        if why:
            return key, why
    return None


def validate_xgboost_params(params: Any, where: str = "xgboost") -> dict[str, Any]:
    """Check per-run XGBoost parameters (e.g. a DAG run's xgboost_overrides); ValueError names the key."""
    problem = xgboost_param_problem(params)
    if problem:
        key, why = problem
        raise ValueError(f"{where}.{key}: {why}" if key else f"{where}: {why}")
    return dict(params)


def _fail(model: str, key: str, why: str) -> SpecError:
    return SpecError(f"models.yaml: model '{model}', key '{key}': {why}")


def _check_keys(model: str, where: str, data: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        if not where:
            raise SpecError(f"models.yaml: model '{model}': the entry must be a mapping of keys, "
                            f"got {type(data).__name__}")
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


def _valid_cron(cron: Any) -> bool:
    if not isinstance(cron, str):
        return False
    if cron.startswith("@"):
        return cron in _CRON_PRESETS
    # Five fields, as Airflow's cron timetables take them (croniter alone would also accept seconds).
    return len(cron.split()) == 5 and croniter.is_valid(cron)


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
        if not isinstance(categories, list) or not categories or not all(isinstance(c, str) for c in categories):
            raise _fail(model, f"{where}.categories", f"feature '{name}': a category needs a list of strings")
        if len(set(categories)) != len(categories):
            raise _fail(model, f"{where}.categories", f"feature '{name}': categories repeat")
    elif categories:
        raise _fail(model, f"{where}.categories", f"feature '{name}': only category features take categories")
    nullable = raw.get("nullable", False)
    if not isinstance(nullable, bool):
        raise _fail(model, f"{where}.nullable", f"feature '{name}': must be true or false")
    return Feature(name=name, type=ftype, nullable=nullable, categories=tuple(categories))


def _parse_monitoring(model: str, raw: Any) -> MonitoringConfig:
    """The `monitoring:` block: each threshold a mapping {warn, alert} (either may be left to its default)."""
    defaults = MonitoringConfig()
    if raw is None:
        return defaults
    counts = ("label_lookback_days", "online_min_rows")
    raw = _check_keys(model, "monitoring", raw, {*MONITORING_THRESHOLDS, *counts})
    values: dict[str, Any] = {}
    for key in MONITORING_THRESHOLDS:
        if key not in raw:
            continue
        where = f"monitoring.{key}"
        limits = _check_keys(model, where, raw[key], {"warn", "alert"})
        default = getattr(defaults, key)
        warn, alert = limits.get("warn", default.warn), limits.get("alert", default.alert)
        for name, value in (("warn", warn), ("alert", alert)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise _fail(model, f"{where}.{name}", f"must be a number >= 0, got {value!r}")
        if warn > alert:
            raise _fail(model, where, f"warn ({warn:g}) must not be above alert ({alert:g})")
        values[key] = Threshold(float(warn), float(alert))
    for key in counts:
        if key in raw:
            count = raw[key]
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise _fail(model, f"monitoring.{key}", f"must be an integer >= 0, got {count!r}")
            values[key] = count
    return MonitoringConfig(**{**{k: getattr(defaults, k) for k in (*MONITORING_THRESHOLDS, *counts)}, **values})


def _parse_rollout(model: str, raw: Any) -> RolloutConfig:
    """The `rollout:` block: the canary's stickiness and the limits of its automatic rollback."""
    if raw is None:
        return RolloutConfig()
    raw = _check_keys(model, "rollout", raw, {"sticky", *_ROLLOUT_COUNTS, *_ROLLOUT_LIMITS})
    sticky = raw.get("sticky", RolloutConfig.sticky)
    if sticky not in STICKY_MODES:
        raise _fail(model, "rollout.sticky", f"must be one of {', '.join(STICKY_MODES)}, got {sticky!r}")
    values: dict[str, Any] = {"sticky": sticky}
    for key in _ROLLOUT_COUNTS:
        if key in raw:
            count = raw[key]
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise _fail(model, f"rollout.{key}", f"must be an integer >= 1, got {count!r}")
            values[key] = count
    for key in _ROLLOUT_LIMITS:
        if key in raw:
            _positive(model, f"rollout.{key}", raw[key], number=float)
            values[key] = float(raw[key])
    if values.get("p99_ratio", RolloutConfig.p99_ratio) < 1:
        raise _fail(model, "rollout.p99_ratio", "must be at least 1 (a ratio to the champion's p99)")
    return RolloutConfig(**values)


def _parse_explain(model: str, raw: Any) -> ExplainConfig | None:
    """`batch.explain`: absent or false = off; true or a mapping {top_k, method, rows} = on.
    rows: "all", or {top: N} (the N highest scores of the day)."""
    if raw is None or raw is False:
        return None
    if raw is True:
        return ExplainConfig()
    raw = _check_keys(model, "batch.explain", raw, {"top_k", "method", "rows"})
    top_k = raw.get("top_k", ExplainConfig.top_k)
    _positive(model, "batch.explain.top_k", top_k)  # more than the model's features means all of them
    method = raw.get("method", ExplainConfig.method)
    if method not in ("exact", "approx"):
        raise _fail(model, "batch.explain.method", f"must be exact or approx, got {method!r}")
    rows = raw.get("rows", {"top": ExplainConfig.top})
    if rows == EXPLAIN_ALL:
        return ExplainConfig(top_k=top_k, method=method, rows=EXPLAIN_ALL)
    if not isinstance(rows, dict):
        raise _fail(model, "batch.explain.rows", f"must be 'all' or {{top: N}}, got {rows!r}")
    rows = _check_keys(model, "batch.explain.rows", rows, {"top"})
    if "top" not in rows:
        raise _fail(model, "batch.explain.rows.top", "missing required key (the number of highest scores)")
    _positive(model, "batch.explain.rows.top", rows["top"])
    return ExplainConfig(top_k=top_k, method=method, rows="top", top=rows["top"])


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
        if not _valid_cron(cron):
            raise _fail(name, key, f"not a valid cron expression (5 fields, or one of "
                                   f"{', '.join(sorted(_CRON_PRESETS))}): {cron!r}")

    params = raw.get("xgboost") or {}
    params = _check_keys(name, "xgboost", params, _XGB_ALLOWED)
    problem = xgboost_param_problem(params)
    if problem:
        raise _fail(name, f"xgboost.{problem[0]}", problem[1])

    training = _sub(name, "training", raw.get("training"), TrainingConfig, {"history_days", "holdout_days", "min_rows"})
    for key in ("history_days", "holdout_days", "min_rows"):
        _positive(name, f"training.{key}", getattr(training, key))
    if training.holdout_days >= training.history_days:
        raise _fail(name, "training.holdout_days", "must be shorter than training.history_days")

    serving = _sub(name, "serving", raw.get("serving"), ServingConfig, {"mode", "latency_budget_ms"})
    if serving.mode not in ("batch", "online", "both"):
        raise _fail(name, "serving.mode", f"must be batch, online or both, got {serving.mode!r}")
    _positive(name, "serving.latency_budget_ms", serving.latency_budget_ms, number=float)

    raw_batch = dict(raw.get("batch") or {}) if isinstance(raw.get("batch"), dict) else raw.get("batch")
    explain = _parse_explain(name, raw_batch.pop("explain", None)) if isinstance(raw_batch, dict) else None
    batch = _sub(name, "batch", raw_batch, BatchConfig,
                 {"shards", "reject_threshold", "retention_days", "chunk_rows"})
    if explain is not None:
        batch = dataclasses.replace(batch, explain=explain)
    for key in ("shards", "retention_days", "chunk_rows"):
        _positive(name, f"batch.{key}", getattr(batch, key))
    if (isinstance(batch.reject_threshold, bool) or not isinstance(batch.reject_threshold, (int, float))
            or not 0 <= batch.reject_threshold <= 1):
        raise _fail(name, "batch.reject_threshold", f"must be a fraction in [0, 1], got {batch.reject_threshold!r}")

    return ModelSpec(
        name=name, task=task, source=source, features=features, label=label, metric=metric,
        prediction_table=raw["prediction_table"], schedule=schedule, train_schedule=train_schedule,
        xgboost=dict(params), training=training, serving=serving, batch=batch,
        monitoring=_parse_monitoring(name, raw.get("monitoring")),
        rollout=_parse_rollout(name, raw.get("rollout")),
        description=str(raw.get("description", "")),
    )


def parse_specs(document: Any) -> dict[str, ModelSpec]:
    if not isinstance(document, dict) or set(document) != {"models"} or not isinstance(document["models"], dict):
        raise SpecError("models.yaml: the top level must be a single 'models' mapping")
    if not document["models"]:
        raise SpecError("models.yaml: 'models' lists no model")
    specs = {str(name): _parse_model(str(name), raw) for name, raw in document["models"].items()}
    owner: dict[str, str] = {}
    for spec in specs.values():  # two models writing one table would overwrite each other's predictions
        if spec.prediction_table in owner:
            other = owner[spec.prediction_table]
            raise _fail(spec.name, "prediction_table",
                        f"'{spec.prediction_table}' is already the prediction table of model '{other}'")
        owner[spec.prediction_table] = spec.name
    return specs


class _StrictLoader(yaml.SafeLoader):
    """safe_load, except that a repeated key is an error instead of silently replacing the first entry."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise SpecError(f"models.yaml line {key_node.start_mark.line + 1}: key '{key}' appears twice "
                            f"in the same mapping")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def spec_file() -> Path:
    return CoreSettings.from_env().models_file or DEFAULT_SPEC_FILE


def load_specs(path: str | Path | None = None) -> dict[str, ModelSpec]:
    """All model specs, validated. Raises SpecError naming the model and key on any problem."""
    path = Path(path) if path else spec_file()
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read the model spec file {path} (MODELS_FILE): {exc}") from exc
    try:
        document = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from exc
    return parse_specs(document)


def load_spec(name: str, path: str | Path | None = None) -> ModelSpec:
    specs = load_specs(path)
    if name not in specs:
        raise SpecError(f"models.yaml: no model named '{name}' (known: {', '.join(sorted(specs))})")
    return specs[name]
