"""The online app in-process (Flask's test client), with no PostgreSQL and no MLflow: a real scorer over a small
XGBoost booster trained here on synthetic churn data, a real ModelHolder serving it, and an in-memory store
(the one collaborator faked: it stands in for the database and can be switched "down")."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import uuid
from typing import Any

import xgboost as xgb
from flask import Flask

from scoring import job_queue
from scoring.demo_data import generate_day
from scoring.encoding import encode
from scoring.scorer import Scorer
from scoring.spec import ModelSpec, load_spec
from serving.app import create_app
from serving.config import Settings
from serving.failures import StoreUnavailable
from serving.lookup_queries import Precomputed
from serving.model_holder import ModelHolder

MODEL = "churn"
VERSION = "1"
DAY = dt.date(2026, 11, 1)
RECORD = {"tenure_months": 12, "plan": "basic", "contract": "one-year", "region": None, "payment_method": "card",
          "monthly_charges": 50.5, "data_usage_gb": 3.2, "avg_session_minutes": 10.0, "support_calls_30d": 1,
          "late_payments_12m": 0, "num_products": 2, "days_since_last_login": 3}


def churn_spec() -> ModelSpec:
    return load_spec(MODEL)


def train_scorer(spec: ModelSpec, version: str = VERSION) -> Scorer:
    """A small booster on a synthetic day (the demo data's planted signal): a few ms to train."""
    frame = generate_day(DAY, 400, seed=3)
    data = xgb.DMatrix(encode(spec, frame[spec.feature_names]).matrix, label=frame[spec.label],
                       feature_names=spec.feature_names)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "nthread": 1}, data, num_boost_round=8)
    return Scorer.from_booster(spec, booster, version, threads=1)


class MemoryStore:
    """The serving store's interface (serving.dataplane.Store) over dicts; `up = False` makes every call fail as an
    unreachable database does."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.up = True
        self.predictions: dict[tuple[dt.date, int], Precomputed] = {}
        self.features: dict[int, tuple[dt.date, dict[str, Any]]] = {}
        self.jobs: dict[uuid.UUID, job_queue.Job] = {}
        self.stored_reasons: dict[tuple[dt.date, int], list[dict[str, Any]]] = {}
        self._payloads: dict[uuid.UUID, list[dict[str, Any]]] = {}

    def _check(self) -> None:
        if not self.up:
            raise StoreUnavailable("serving database unavailable: no connection within 0.1s")

    def add_prediction(self, entity_id: int, score: float, day: dt.date = DAY) -> None:
        self.predictions[(day, entity_id)] = Precomputed(entity_id, day, score, int(score > 0.5), 1, "run_test",
                                                         dt.datetime(2026, 11, 2, 2, 0, tzinfo=dt.UTC))

    def latest_date(self) -> dt.date | None:
        self._check()
        return max((day for day, _ in self.predictions), default=None)

    def latest_features(self, entity_id: int) -> tuple[dt.date, dict[str, Any]] | None:
        self._check()
        return self.features.get(entity_id)

    def get_many(self, entity_ids: list[int], day: dt.date) -> dict[int, Precomputed]:
        self._check()
        return {e: self.predictions[(day, e)] for e in entity_ids if (day, e) in self.predictions}

    def document(self, entity_id: int, day: dt.date) -> bytes | None:
        self._check()
        p = self.predictions.get((day, entity_id))
        if p is None:
            return None
        return json.dumps({"model": self.spec.name, "entity_key": self.spec.source.entity_key,
                           "entity_id": entity_id, "prediction_date": day.isoformat(), "score": p.score,
                           "label": p.label, "model_version": str(p.model_version), "run_id": p.run_id,
                           "scored_at": p.scored_at.isoformat(), "source": "precomputed"}).encode()

    def reasons(self, entity_id: int, day: dt.date) -> list[dict[str, Any]]:
        self._check()
        return self.stored_reasons.get((day, entity_id), [])

    def ping(self) -> bool:
        return self.up

    def submit_job(self, model: str, job: job_queue.NewJob) -> job_queue.Submitted:
        self._check()
        records = list(job.records)
        if any(isinstance(v, float) and math.isinf(v) for rec in records for v in rec.values()):
            raise ValueError("a value cannot be stored as JSON")
        for known in self.jobs.values():
            if job.idempotency_key is not None and (known.idempotency_key, known.owner) == (job.idempotency_key,
                                                                                            job.owner):
                if self._payloads[known.id] != records:
                    raise job_queue.IdempotencyConflict(model, job.idempotency_key, known.id)
                return known, False
        new = job_queue.Job(id=uuid.uuid4(), model=model, status="queued", n_records=len(records), attempts=0,
                            max_attempts=3, created_at=dt.datetime.now(dt.UTC), idempotency_key=job.idempotency_key,
                            owner=job.owner)
        self.jobs[new.id] = new
        self._payloads[new.id] = records
        return new, True

    def submit_bulk(self, model: str, jobs: list[job_queue.NewJob]) -> list[job_queue.Submitted]:
        return [self.submit_job(model, job) for job in jobs]

    def get_job(self, job_id: Any, owner: str = job_queue.ANONYMOUS) -> job_queue.Job:
        self._check()
        if job_id not in self.jobs or self.jobs[job_id].owner != owner:
            raise job_queue.JobNotFound(job_id)
        return self.jobs[job_id]

    def cancel_job(self, job_id: Any, owner: str = job_queue.ANONYMOUS) -> job_queue.Job:
        job = self.get_job(job_id, owner)
        if job.status == "queued":
            job = self.jobs[job_id] = dataclasses.replace(job, status="cancelled",
                                                          finished_at=dt.datetime.now(dt.UTC))
        if job.status != "cancelled":
            raise job_queue.JobStateError(job_id, job.status, "cancelled")
        return job


def make_app(scorer: Scorer | None, store: MemoryStore | None = None, **settings: Any) -> tuple[Flask, MemoryStore]:
    """The real app factory with the given dependencies; `scorer=None` is a deployment with no version yet."""
    spec = scorer.spec if scorer is not None else churn_spec()
    holder = ModelHolder(spec)  # never started: no registry is polled
    if scorer is not None:
        holder.install(scorer)
    store = store or MemoryStore(spec)
    return create_app(Settings(model=spec.name, **settings), holder=holder, store=store), store
