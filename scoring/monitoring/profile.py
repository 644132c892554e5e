"""Reference profiles: what the data looked like when a version was trained, kept with the version in MLflow.

A profile holds one `Histogram` per feature and one for the held-out scores:

* numbers: fixed bins whose interior edges are the training window's deciles (deduplicated, so an integer
  feature with four values gets at most five bins); bins are left-closed, [e_i, e_i+1), with open outer bins, so
  every value of any later day falls in exactly one bin. This is what PostgreSQL's `width_bucket(x, edges)`
  computes (the number of edges <= x), so a day can be binned in SQL with the very same edges.
* categories: one count per category of the spec plus a last bin for any other value (a changed spelling
  shows up there);
* missing values are counted apart (`nulls`), so the null rate and the distribution are two separate checks.

The profile travels as JSON (`monitoring/reference_profile.json` in the version's training run) plus a few tags
on the version; `load_reference` reads it back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from scoring.spec import Feature, ModelSpec

PROFILE_VERSION = 1
N_BINS = 10  # deciles
ARTIFACT_DIR = "monitoring"
ARTIFACT_FILE = "reference_profile.json"
ARTIFACT_PATH = f"{ARTIFACT_DIR}/{ARTIFACT_FILE}"
OTHER = "(other)"

Kind = Literal["numeric", "category"]


@dataclass
class Histogram:
    """Counts of one feature (or of the scores) over fixed bins, plus the missing values."""

    kind: Kind
    bins: list[Any]  # numeric: the interior edges (len(counts) - 1); category: the categories (len(counts) - 1)
    counts: list[int]
    nulls: int = 0

    @property
    def non_null(self) -> int:
        return int(sum(self.counts))

    @property
    def rows(self) -> int:
        return self.non_null + self.nulls

    @property
    def null_rate(self) -> float:
        return self.nulls / self.rows if self.rows else 0.0

    def labels(self) -> list[str]:
        """A short label per bin (for plots and the report)."""
        if self.kind == "category":
            return [*map(str, self.bins), OTHER]
        if not self.bins:
            return ["all"]
        edges = [f"{e:.4g}" for e in self.bins]
        return [f"<{edges[0]}", *(f"[{a}, {b})" for a, b in zip(edges, edges[1:], strict=False)), f">={edges[-1]}"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        return cls(kind=data["kind"], bins=list(data["bins"]), counts=[int(c) for c in data["counts"]],
                   nulls=int(data.get("nulls", 0)))


def decile_edges(values: np.ndarray, n_bins: int = N_BINS) -> list[float]:
    """Interior bin edges: the quantiles 1/n .. (n-1)/n of the non-missing values, deduplicated."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return []
    # observed values as edges (not interpolated ones): an integer feature keeps integer bin limits
    quantiles = np.quantile(values, np.arange(1, n_bins) / n_bins, method="inverted_cdf")
    return [float(e) for e in np.unique(quantiles)]


def numeric_histogram(values: np.ndarray, edges: list[float]) -> Histogram:
    """Counts of `values` in the bins of `edges` (left-closed, open outer bins); NaN counts as missing."""
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    index = np.searchsorted(np.asarray(edges, dtype=np.float64), values[~missing], side="right")
    counts = np.bincount(index, minlength=len(edges) + 1)
    return Histogram("numeric", list(edges), [int(c) for c in counts], int(missing.sum()))


def category_histogram(values: Any, categories: tuple[str, ...] | list[str]) -> Histogram:
    """Counts per category (in the given order), then one count for every other value; None/NaN is missing."""
    series = pd.Series(values, dtype=object)
    missing = series.isna()
    found = series[~missing].astype(str).value_counts()
    counts = [int(found.get(c, 0)) for c in categories]
    counts.append(int(found.sum()) - sum(counts))
    return Histogram("category", list(categories), counts, int(missing.sum()))


def feature_histogram(feature: Feature, values: Any, edges: list[float] | None = None) -> Histogram:
    """The histogram of one raw feature column; numeric edges default to the column's own deciles."""
    if feature.type == "category":
        return category_histogram(values, feature.categories)
    numbers = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return numeric_histogram(numbers, decile_edges(numbers) if edges is None else edges)


@dataclass
class ReferenceProfile:
    """The training window's features and the held-out scores of one version."""

    model: str
    metric: str
    holdout_metric: float
    window: str
    rows: int
    features: dict[str, Histogram]
    score: Histogram
    score_mean: float
    version: int = PROFILE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))  # features keep the spec's order

    @classmethod
    def from_json(cls, text: str) -> ReferenceProfile:
        data = json.loads(text)
        if data.get("version") != PROFILE_VERSION:
            raise ValueError(f"reference profile format {data.get('version')!r} is not {PROFILE_VERSION}")
        return cls(model=data["model"], metric=data["metric"], holdout_metric=float(data["holdout_metric"]),
                   window=data["window"], rows=int(data["rows"]),
                   features={k: Histogram.from_dict(v) for k, v in data["features"].items()},
                   score=Histogram.from_dict(data["score"]), score_mean=float(data["score_mean"]),
                   extra=dict(data.get("extra") or {}))

    def tags(self) -> dict[str, str]:
        """Tags on the model version: where the profile is and its headline figures."""
        return {"monitoring.profile": ARTIFACT_PATH, "monitoring.profile_rows": str(self.rows),
                "monitoring.holdout_score_mean": f"{self.score_mean:.6g}",
                f"monitoring.holdout_{self.metric}": f"{self.holdout_metric:.6g}"}


def build_reference(spec: ModelSpec, window_rows: pd.DataFrame, holdout_scores: np.ndarray, holdout_metric: float,
                    window: str) -> ReferenceProfile:
    """The profile of the raw training-window rows (features as stored, before encoding) and the held-out scores."""
    features = {f.name: feature_histogram(f, window_rows[f.name].to_numpy()) for f in spec.features}
    scores = np.asarray(holdout_scores, dtype=np.float64)
    return ReferenceProfile(model=spec.name, metric=spec.metric, holdout_metric=float(holdout_metric), window=window,
                            rows=len(window_rows), features=features,
                            score=numeric_histogram(scores, decile_edges(scores)),
                            score_mean=float(scores.mean()) if len(scores) else float("nan"))


def log_reference(profile: ReferenceProfile) -> None:
    """Log the profile into the active MLflow run (the version's training run)."""
    import mlflow

    mlflow.log_text(profile.to_json(), ARTIFACT_PATH)


def load_reference(model: str, version: str | int) -> ReferenceProfile | None:
    """The reference profile of a registered version; None when the version has none (trained before profiles)."""
    import mlflow
    from mlflow import MlflowClient

    mc = MlflowClient()
    mv = mc.get_model_version(model, str(version))
    if "monitoring.profile" not in mv.tags or not mv.run_id:
        return None
    text = mlflow.artifacts.load_text(f"runs:/{mv.run_id}/{mv.tags['monitoring.profile']}")
    return ReferenceProfile.from_json(text)
