"""A canary's state in the registry, the moves of its share, and the judgement of its evidence (no nginx here:
stack/rollout.py applies the state to the gateway and gathers the request figures).

Where the state lives, and why: the version is the MLflow alias `canary` (resolved by the one resolve-and-approve
rule, so only a gate-approved version can take traffic), its share the registered model's tag
`rollout.canary_percent` (and `rollout.since`, when it last moved). Moving a share is an operation on the running
platform, like moving `champion`: it must not need a commit to models.yaml, and MLflow shows who moved what
when. The policy (stickiness, rollback limits) is configuration and stays in models.yaml (`rollout:`).

Every move writes one ops.rollout_events row, tags the version (`rollout.decision`, `rollout.reason`) and logs a
line; a rollback also keeps its figures in the row's `evidence`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import psycopg
from mlflow import MlflowClient

from scoring.monitoring.checks import psi
from scoring.monitoring.metrics import defined, metric_value
from scoring.registry import CHAMPION, AliasNotFoundError, client, raise_typed, resolve_approved
from scoring.spec import ModelSpec, RolloutConfig

log = logging.getLogger("scoring.rollout")

CANARY = "canary"
PERCENT_TAG = "rollout.canary_percent"
SINCE_TAG = "rollout.since"  # epoch seconds of the last share move: evidence is only counted after it
DECISION_TAG = "rollout.decision"  # on the version: canary, promoted, aborted, rolled_back
REASON_TAG = "rollout.reason"
SHADOW_ROUTE = "shadow"  # payload-log rows scored by the challenger (serving/shadow.py), never answered


class RolloutError(RuntimeError):
    """A rollout command cannot be done (no canary, a version the gate did not approve, a bad share)."""


@dataclass(frozen=True)
class CanaryState:
    """What the registry says: the canary's version (None: no alias) and share of live traffic (0-100)."""

    model: str
    version: str | None
    percent: float
    since: float = 0.0

    @property
    def active(self) -> bool:
        return self.version is not None and self.percent > 0


def read_state(model: str, mc: MlflowClient | None = None) -> CanaryState:
    mc = mc or client()
    try:
        registered = mc.get_registered_model(model)
    except Exception as exc:
        raise_typed(exc, f"model '{model}'", AliasNotFoundError)
    tags = registered.tags or {}
    version = (registered.aliases or {}).get(CANARY)
    try:
        percent = min(100.0, max(0.0, float(tags.get(PERCENT_TAG, "0"))))
        since = float(tags.get(SINCE_TAG, "0"))
    except ValueError:  # a hand-edited tag that is not a number: no share
        percent, since = 0.0, 0.0
    return CanaryState(model, str(version) if version is not None else None, percent if version else 0.0, since)


def check_percent(percent: float) -> float:
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100 \
            or math.isnan(percent):
        raise RolloutError(f"a canary share is a percentage from 0 to 100, got {percent!r}")
    return round(float(percent), 2)  # nginx's split_clients takes two decimals


def record(conn: psycopg.Connection | None, model: str, action: str, version: str | None, percent: float,
           reason: str = "", evidence: dict | None = None) -> None:
    """One ops.rollout_events row (skipped without a connection) and the log line."""
    log.warning("rollout %s: %s version %s, share %g%%%s", model, action, version, percent,
                f": {reason}" if reason else "")
    if conn is None:
        return
    conn.execute("INSERT INTO ops.rollout_events (model_name, action, version, percent, reason, evidence) "
                 "VALUES (%s, %s, %s, %s, %s, %s)",
                 (model, action, int(version) if version and version.isdigit() else None, percent, reason,
                  json.dumps(evidence, default=str) if evidence is not None else None))
    if not conn.autocommit:
        conn.commit()


def _set_share(mc: MlflowClient, model: str, percent: float) -> None:
    mc.set_registered_model_tag(model, PERCENT_TAG, f"{percent:g}")
    mc.set_registered_model_tag(model, SINCE_TAG, f"{time.time():.3f}")


def _tag(mc: MlflowClient, model: str, version: str, decision: str, reason: str) -> None:
    mc.set_model_version_tag(model, version, DECISION_TAG, decision)
    mc.set_model_version_tag(model, version, REASON_TAG, reason[:4000])


def start(model: str, version: str, percent: float, conn: psycopg.Connection | None = None,
          mc: MlflowClient | None = None) -> CanaryState:
    """Make `version` (gate-approved) the canary with `percent` of the live traffic."""
    mc = mc or client()
    percent = check_percent(percent)
    resolved = resolve_approved(model, str(version), mlflow_client=mc)  # refuses a version the gate did not pass
    champion = resolve_approved(model, CHAMPION, mlflow_client=mc).version
    if resolved.version == champion:
        raise RolloutError(f"model '{model}': version {version} is already the champion")
    mc.set_registered_model_alias(model, CANARY, resolved.version)
    _set_share(mc, model, percent)
    _tag(mc, model, resolved.version, "canary", f"canary at {percent:g}% beside champion {champion}")
    record(conn, model, "start", resolved.version, percent, f"beside champion {champion}")
    return read_state(model, mc)


def set_share(model: str, percent: float, conn: psycopg.Connection | None = None,
              mc: MlflowClient | None = None, reason: str = "") -> CanaryState:
    mc = mc or client()
    percent = check_percent(percent)
    state = read_state(model, mc)
    if state.version is None:
        raise RolloutError(f"model '{model}' has no canary (start one: python -m stack.rollout start {model} "
                           "<version> --percent 10)")
    resolve_approved(model, CANARY, mlflow_client=mc)  # still approved (a tag may have changed since)
    _set_share(mc, model, percent)
    record(conn, model, "share", state.version, percent, reason)
    return read_state(model, mc)


def promote(model: str, conn: psycopg.Connection | None = None, mc: MlflowClient | None = None) -> str:
    """The canary becomes the champion (every champion replica hot-reloads it); the canary alias goes."""
    mc = mc or client()
    state = read_state(model, mc)
    if state.version is None:
        raise RolloutError(f"model '{model}' has no canary to promote")
    version = resolve_approved(model, CANARY, mlflow_client=mc).version
    previous = resolve_approved(model, CHAMPION, mlflow_client=mc).version
    mc.set_registered_model_alias(model, CHAMPION, version)
    _set_share(mc, model, 0)
    mc.delete_registered_model_alias(model, CANARY)
    _tag(mc, model, version, "promoted", f"promoted from canary ({state.percent:g}%), replacing {previous}")
    record(conn, model, "promote", version, 0, f"replacing champion {previous}")
    return version


def abort(model: str, reason: str, conn: psycopg.Connection | None = None, mc: MlflowClient | None = None, *,
          action: str = "abort", evidence: dict | None = None) -> CanaryState:
    """The canary's share to 0 (the alias stays, so the version can be looked at and started again)."""
    mc = mc or client()
    state = read_state(model, mc)
    if state.version is None:
        raise RolloutError(f"model '{model}' has no canary")
    _set_share(mc, model, 0)
    _tag(mc, model, state.version, "rolled_back" if action == "rollback" else "aborted", reason)
    record(conn, model, action, state.version, 0, reason, evidence)
    return read_state(model, mc)


# --- evidence ------------------------------------------------------------------------------------------------


# Latency bins of the gateway-side figures (ms, ~3% wide): a window of requests is kept as counts, not as a list.
LATENCY_EDGES_MS = np.geomspace(0.05, 120_000, 240)


def latency_counts(latencies_ms: Sequence[float]) -> np.ndarray:
    return np.bincount(np.searchsorted(LATENCY_EDGES_MS, latencies_ms), minlength=len(LATENCY_EDGES_MS) + 1)


@dataclass
class Arm:
    """One side of the comparison over the window: requests answered (and 5xx among them, as the gateway saw
    them: the replica's own failure counts even when the gateway retried it elsewhere), latencies, logged scores
    and (score, label) pairs once labels are in."""

    version: str | None
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    labelled: tuple[np.ndarray, np.ndarray] = field(default_factory=lambda: (np.empty(0), np.empty(0)))
    latency_hist: np.ndarray | None = None  # counts over LATENCY_EDGES_MS (the watcher's window), instead

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else float("nan")

    @property
    def p99_ms(self) -> float:
        if self.latencies_ms:
            return float(np.percentile(self.latencies_ms, 99))
        if self.latency_hist is None or not self.latency_hist.sum():
            return float("nan")
        rank = int(np.searchsorted(np.cumsum(self.latency_hist), 0.99 * self.latency_hist.sum()))
        return float(LATENCY_EDGES_MS[min(rank, len(LATENCY_EDGES_MS) - 1)])  # the bin's upper edge

    def summary(self) -> dict:
        return {"version": self.version, "requests": self.requests, "errors": self.errors,
                "error_rate": _finite(self.error_rate), "p99_ms": _finite(self.p99_ms),
                "scores": int(len(self.scores)), "labelled": int(len(self.labelled[0]))}


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


@dataclass(frozen=True)
class Verdict:
    """One comparison: its value, its limit, whether it was judged (enough data) and whether it crossed."""

    check: str
    value: float | None
    limit: float
    judged: bool
    crossed: bool
    detail: str

    def describe(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        state = "CROSSED" if self.crossed else "ok" if self.judged else "not judged"
        return f"{self.check} = {value} (limit {self.limit:g}; {state}: {self.detail})"


def score_psi(champion: np.ndarray, canary: np.ndarray, bins: int = 10) -> float:
    """PSI of the canary's scores against the champion's, over the champion's deciles (scoring.monitoring's PSI)."""
    if len(champion) == 0 or len(canary) == 0:
        return float("nan")
    edges = np.unique(np.quantile(champion, np.linspace(0, 1, bins + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(edges, champion, side="right"), minlength=len(edges) + 1)
    now = np.bincount(np.searchsorted(edges, canary, side="right"), minlength=len(edges) + 1)
    return psi(ref, now)


def judge(spec: ModelSpec, champion: Arm, canary: Arm) -> list[Verdict]:
    """The canary against the champion on the same window, against models.yaml `rollout:`."""
    limits: RolloutConfig = spec.rollout
    out = []
    enough = canary.requests >= limits.min_requests and champion.requests >= limits.min_requests
    counts = f"canary {canary.requests} requests, champion {champion.requests}; judged from {limits.min_requests}"
    increase = canary.error_rate - champion.error_rate
    out.append(Verdict("error_rate_increase", _finite(increase), limits.error_rate_increase, enough,
                       enough and increase >= limits.error_rate_increase,
                       f"canary {canary.errors}/{canary.requests} 5xx, champion {champion.errors}/"
                       f"{champion.requests}; {counts}"))
    ratio = canary.p99_ms / champion.p99_ms if champion.p99_ms > 0 else float("nan")
    slower = canary.p99_ms - champion.p99_ms
    out.append(Verdict("p99_ratio", _finite(ratio), limits.p99_ratio, enough,
                       enough and ratio >= limits.p99_ratio and slower >= limits.p99_min_increase_ms,
                       f"canary p99 {canary.p99_ms:.1f} ms, champion {champion.p99_ms:.1f} ms (crossing also needs "
                       f"+{limits.p99_min_increase_ms:g} ms); {counts}"))
    scored = len(canary.scores) >= limits.min_scores and len(champion.scores) >= limits.min_scores
    value = score_psi(champion.scores, canary.scores)
    out.append(Verdict("score_psi", _finite(value), limits.score_psi, scored, scored and value >= limits.score_psi,
                       f"{len(canary.scores)} canary and {len(champion.scores)} champion logged scores; judged from "
                       f"{limits.min_scores}"))
    (c_scores, c_labels), (p_scores, p_labels) = canary.labelled, champion.labelled
    labelled = (len(c_labels) >= limits.min_labels and len(p_labels) >= limits.min_labels
                and defined(spec.metric, c_labels) and defined(spec.metric, p_labels))
    loss = float("nan")
    detail = f"{len(c_labels)} canary and {len(p_labels)} champion labelled rows; judged from {limits.min_labels}"
    if labelled:
        mine, theirs = metric_value(spec.metric, c_labels, c_scores), metric_value(spec.metric, p_labels, p_scores)
        loss = ((theirs - mine) if spec.higher_is_better else (mine - theirs)) / max(abs(theirs), 1e-12)
        detail = f"canary {spec.metric} {mine:.4f}, champion {theirs:.4f}; {detail}"
    out.append(Verdict("metric_degradation", _finite(loss), limits.metric_degradation, labelled,
                       labelled and loss >= limits.metric_degradation, detail))
    return out


def crossed(verdicts: Sequence[Verdict]) -> list[Verdict]:
    return [v for v in verdicts if v.crossed]


def evidence(champion: Arm, canary: Arm, verdicts: Sequence[Verdict], since: dt.datetime) -> dict:
    return {"since": since.isoformat(), "champion": champion.summary(), "canary": canary.summary(),
            "verdicts": [asdict(v) for v in verdicts]}


# --- what the payload log says about each version ----------------------------------------------------------

_SCORES = ("SELECT score FROM ops.online_payloads WHERE model_name = %s AND model_version = %s AND route <> %s "
           "AND log_date >= %s AND logged_at >= %s ORDER BY logged_at DESC LIMIT %s")


def logged_scores(conn: psycopg.Connection, model: str, version: str, since: dt.datetime,
                  limit: int = 100_000) -> np.ndarray:
    """The scores `version` answered live in the window (the payload log's sample, shadow rows left out)."""
    rows = conn.execute(_SCORES, (model, int(version), SHADOW_ROUTE, since.date(), since, limit)).fetchall()
    return np.array([r[0] for r in rows], dtype=np.float64)


def labelled_scores(conn: psycopg.Connection, spec: ModelSpec, version: str, since: dt.datetime,
                    limit: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """(score, label) of `version`'s logged live rows whose entity has a label for the day it was scored."""
    from psycopg import sql

    from scoring.store import split_table

    query = sql.SQL(
        "SELECT p.score, f.{label} FROM ops.online_payloads p JOIN {source} f ON f.{key} = p.entity_id "
        "AND f.{day} = p.log_date WHERE p.model_name = %s AND p.model_version = %s AND p.route <> %s "
        "AND p.log_date >= %s AND p.logged_at >= %s AND f.{label} IS NOT NULL LIMIT %s").format(
        label=sql.Identifier(spec.label), source=sql.Identifier(*split_table(spec.source.table)),
        key=sql.Identifier(spec.source.entity_key), day=sql.Identifier(spec.source.date_column))
    rows = conn.execute(query, (spec.name, int(version), SHADOW_ROUTE, since.date(), since, limit)).fetchall()
    if not rows:
        return np.empty(0), np.empty(0)
    data = np.array(rows, dtype=np.float64)
    return data[:, 0], data[:, 1]
