"""The demo driven into a compose deployment as a user would, through its published ports only: features seeded
by the one-shot `demo-seed` service (the features role), both models trained through Airflow's REST API, the
day predicted by the nightly DAG (triggered by the promotion), then answers through the gateway."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import requests

from scoring.spec import load_specs
from stack.airflow_api import AirflowClient
from stack.demo import DemoError, run_and_wait, train_once, wait_for_dags, wait_for_new_run
from testing.compose.deployment import Deployment
from testing.compose.engine import say

DEMO_DAG = "demo_features"  # writes features: in compose only the features role may (demo-seed does it)


def seed(dep: Deployment, end: dt.date, days: int, customers: int) -> float:
    began = time.monotonic()
    dep.compose("run", "--rm", "--no-deps", "demo-seed", "--end", end.isoformat(), "--days", str(days),
                "--customers", str(customers), profiles=("demo",), timeout=900)
    seconds = time.monotonic() - began
    say(f"features: {days} days x {customers} customers ending {end} ({seconds:.0f}s)")
    return seconds


class PatientAirflowClient(AirflowClient):
    """Retries a read (or an idempotent PATCH) the api-server did not answer: on a loaded 2-core host it went
    unanswered for over 30 s while the first training tasks started (a trigger, a POST, is never repeated)."""

    patience_s = 180

    def _call(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any) -> requests.Response:
        deadline = time.monotonic() + self.patience_s
        while True:
            try:
                return super()._call(method, path, ok, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if method not in ("GET", "PATCH") or time.monotonic() > deadline:
                    raise
                say(f"Airflow API {method} {path}: {type(exc).__name__}, retrying")
                time.sleep(3)


def airflow(dep: Deployment) -> AirflowClient:
    return PatientAirflowClient(dep.airflow, dep.env.get("AIRFLOW_ADMIN_USER", "admin"),
                                dep.env["AIRFLOW_ADMIN_PASSWORD"])


def loaded_version(dep: Deployment, model: str) -> int | None:
    resp = requests.get(f"{dep.gateway}/v1/models/{model}", timeout=10)
    return resp.json().get("loaded_version") if resp.status_code == 200 else None


def wait_loaded(dep: Deployment, models: list[str], timeout: float) -> dict[str, int]:
    """Each model's version once its replicas loaded a champion (they poll the alias)."""
    deadline = time.monotonic() + timeout
    while True:
        found = {m: loaded_version(dep, m) for m in models}
        if all(found.values()):
            return found  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise DemoError(f"no model version loaded behind the gateway after {timeout:.0f}s: {found}")
        time.sleep(2)


def drive(dep: Deployment, end: dt.date, days: int = 35, customers: int = 2000,
          timeout: float = 900, seeded: bool = False) -> dict[str, Any]:
    """Seed (unless `seeded`), train every model, predict `end`; returns timings and the versions served."""
    specs = load_specs()
    models = list(specs)
    timings = {} if seeded else {"seed features": seed(dep, end, days, customers)}
    api = airflow(dep)
    wait_for_dags(api, [f"train_{m}" for m in models] + [f"predict_{m}" for m in models], timeout=900)
    api._call("PATCH", f"/dags/{DEMO_DAG}", json={"is_paused": True})
    began = time.monotonic()
    trained_at = dt.datetime.now(dt.UTC)
    train_once(api, models, timeout)
    timings["train"] = time.monotonic() - began
    # the promotion publishes the champion Asset: predict_<m> runs by itself; else the day is triggered
    began = time.monotonic()
    midnight = dt.datetime.combine(end, dt.time(), tzinfo=dt.UTC)
    runs = []
    for model in models:
        promoted = wait_for_new_run(api, f"predict_{model}", trained_at - dt.timedelta(seconds=5),
                                    ("asset_triggered",), timeout=120)
        runs.append((f"predict_{model}", promoted["dag_run_id"] if promoted else f"demo__{end}", midnight))
    run_and_wait(api, runs, timeout)
    timings["predict"] = time.monotonic() - began
    versions = wait_loaded(dep, [m for m in models if specs[m].serving.online], timeout=180)
    say(f"trained and predicted: {versions} (train {timings['train']:.0f}s, predict {timings['predict']:.0f}s)")
    return {"timings": timings, "versions": versions, "runs": runs}


def features_of(model: str, day: dt.date, customers: int, entity_id: int) -> dict[str, Any]:
    """One customer's features of `day`, as the seeding wrote them (the generator is deterministic)."""
    from scoring.demo_data import generate_day

    spec = load_specs()[model]
    frame = generate_day(day, customers)
    row = frame.loc[frame[spec.source.entity_key] == entity_id, list(spec.feature_names)].iloc[0]
    return json.loads(row.to_json())
