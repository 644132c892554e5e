"""`make demo`: the running platform (after `make up`) shown end to end, idempotently.

1. seeds the demo feature history (35 days x 20,000 customers ending today) - only the days that are missing;
   today's snapshot carries the generator's planted drift (avg_session_minutes x 1.6; --drift-from, --no-drift);
2. trains every model through Airflow's REST API (`train_<model>`) - skipped for a model that already has a
   `champion` in MLflow, unless --retrain. The scheduler's own first run (made when `make up` unpaused the DAG,
   skipped then for lack of data) is re-run rather than a second one triggered: one training run per model;
3. today's batch predictions: the promotion triggers `predict_<model>` by itself (the champion Asset); without
   a promotion the demo triggers it - a run that already succeeded is kept, a failed one is cleared and re-run;
4. the predictions trigger `monitor_<model>`: its run for today raises the alert on the drifted feature
   (that failed `alert` task is the demo's point), and the report's URL is printed;
5. prints (and runs) a SQL query over the results and a curl against the serving app.

`python -m stack.demo --bring-your-own` (after it): a churn version trained outside the platform, in plain Python
with scoring.model_matrix, is logged to MLflow and judged by evaluate_churn; prints the gate's decision and reason.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import psycopg

from stack.airflow_api import AirflowApiError, AirflowClient
from stack.config import REPO, ConfigError, StackConfig


class DemoError(RuntimeError):
    pass


def say(message: str) -> None:
    print(message, flush=True)


# --- 1. features ---------------------------------------------------------------------------------------------

def seed_features(url: str, end: dt.date, days: int, customers: int) -> int:
    """Write the snapshots of [end - days + 1, end] that are missing or incomplete; returns days written."""
    from scoring.demo_data import TABLE, generate_day, write_day

    start = end - dt.timedelta(days=days - 1)
    with psycopg.connect(url) as conn:
        have = dict(conn.execute(f"SELECT snapshot_date, count(*) FROM {TABLE} "  # noqa: S608 - fixed table
                                 "WHERE snapshot_date BETWEEN %s AND %s GROUP BY 1", (start, end)).fetchall())
        conn.commit()
        todo = [start + dt.timedelta(days=i) for i in range(days)
                if have.get(start + dt.timedelta(days=i), 0) < customers]
        began = time.monotonic()
        for day in todo:
            write_day(conn, generate_day(day, customers), day)
    if todo:
        say(f"features: wrote {len(todo)} day(s) x {customers} customers into {TABLE} "
            f"({todo[0]}..{todo[-1]}) in {time.monotonic() - began:.1f}s")
    else:
        say(f"features: {days} days x {customers} customers ending {end} already present")
    return len(todo)


def plant_drift(api: AirflowClient, url: str, start: dt.date, end: dt.date, customers: int) -> None:
    """Rewrite the days [start, end] with the generator's planted drift, once the demo_features DAG's own run
    (which writes today's clean snapshot when `make up` unpauses it) is over, so it cannot overwrite them."""
    from scoring.demo_data import DRIFT_FACTOR, DRIFT_FEATURE, generate_day, write_day

    deadline = time.time() + 120
    while time.time() < deadline and any(r["state"] in ("queued", "running") for r in _runs(api, "demo_features")):
        time.sleep(3)
    with psycopg.connect(url) as conn:
        day = start
        while day <= end:
            write_day(conn, generate_day(day, customers, drift_from=start), day)
            day += dt.timedelta(days=1)
    say(f"features: planted drift from {start} ({DRIFT_FEATURE} x {DRIFT_FACTOR}; scoring/demo_data.py)")


# --- 2./3. DAG runs ------------------------------------------------------------------------------------------

def has_champion(mlflow_url: str, model: str) -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return MlflowClient(tracking_uri=mlflow_url).get_model_version_by_alias(model, "champion").version
    except MlflowException:
        return None


def gate_refusal(mlflow_url: str, model: str) -> str:
    """Why the newest version of `model` is not champion, from the promotion gate's tags on it."""
    from mlflow import MlflowClient

    versions = MlflowClient(tracking_uri=mlflow_url).search_model_versions(f"name = '{model}'")
    if not versions:
        return "no version is registered"
    newest = max(versions, key=lambda v: int(v.version))
    return (f"the promotion gate {newest.tags.get('gate.decision', 'did not decide on')} version {newest.version}: "
            f"{newest.tags.get('gate.reason', 'no reason recorded')}")


def run_and_wait(api: AirflowClient, runs: list[tuple[str, str, dt.datetime]], timeout: float) -> None:
    """Trigger (or reuse) each (dag_id, run_id, logical_date) and wait for all; DemoError if any fails."""
    for dag_id, run_id, logical_date in runs:
        existing = api.dag_run(dag_id, run_id)
        if existing is None:
            api.trigger(dag_id, run_id, logical_date)
            say(f"  {dag_id}: triggered run {run_id}")
        elif existing["state"] == "failed":
            api.clear(dag_id, run_id)
            say(f"  {dag_id}: run {run_id} had failed; cleared it to run again")
        else:
            say(f"  {dag_id}: run {run_id} exists ({existing['state']})")
    failed = []
    for dag_id, run_id, _ in runs:
        began = time.monotonic()
        state = api.wait(dag_id, run_id, timeout)
        say(f"  {dag_id}: {state} ({time.monotonic() - began:.0f}s waited)")
        if state != "success":
            bad = {t: s for t, s in api.task_states(dag_id, run_id).items() if s != "success"}
            failed.append(f"{dag_id} run {run_id}: {bad} - see {api.base_url}/dags/{dag_id}/runs/{run_id}")
    if failed:
        raise DemoError("DAG run(s) failed:\n  " + "\n  ".join(failed))


def _runs(api: AirflowClient, dag_id: str) -> list[dict[str, Any]]:
    """The DAG's runs, newest first."""
    resp = api._call("GET", f"/dags/{dag_id}/dagRuns", params={"order_by": "-run_after", "limit": 20})
    return resp.json().get("dag_runs", [])


def train_once(api: AirflowClient, models: list[str], timeout: float) -> None:
    """Train each model with ONE run: the scheduler's first run if there is one (waited for while it runs, re-run
    when it ended without training, e.g. skipped for lack of data before the features were seeded), else a new
    run. A fresh platform thus shows one training run per model, none failed."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    runs = []
    for model in models:
        dag_id = f"train_{model}"
        scheduled = [r for r in _runs(api, dag_id) if r.get("run_type") == "scheduled"]
        if not scheduled:
            runs.append((dag_id, f"demo__{now:%Y%m%dT%H%M%S}", now))
            continue
        run = scheduled[0]
        if run["state"] in ("success", "failed"):
            # its tasks were skipped or failed without a champion: run it again now that the data is there
            api._call("POST", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}/clear",
                      json={"dry_run": False, "only_failed": False})
            say(f"  {dag_id}: re-running the scheduler's run {run['dag_run_id']} (it ended {run['state']} "
                f"before the features were there)")
        else:
            say(f"  {dag_id}: the scheduler's run {run['dag_run_id']} is {run['state']}; waiting for it")
        runs.append((dag_id, run["dag_run_id"], now))
    run_and_wait(api, runs, timeout)


def wait_for_new_run(api: AirflowClient, dag_id: str, after: dt.datetime, kinds: tuple[str, ...],
                     timeout: float) -> dict[str, Any] | None:
    """The first run of `dag_id` of one of `kinds` queued after `after` (e.g. the run an Asset triggered)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for run in _runs(api, dag_id):
            queued = dt.datetime.fromisoformat(run.get("queued_at") or run["run_after"])
            if run.get("run_type") in kinds and queued >= after:
                return run
        time.sleep(3)
    return None


def show_monitoring(api: AirflowClient, cfg: StackConfig, models: list[str], after: dt.datetime,
                    timeout: float) -> None:
    """Wait for the monitor run the predictions triggered; show its alerts and the report's URL."""
    say("\nMonitoring (monitor_<model>, triggered by the predictions Asset):")
    for model in models:
        dag_id = f"monitor_{model}"
        run = wait_for_new_run(api, dag_id, after, ("asset_triggered", "manual"), timeout=120)
        if run is None:
            say(f"  {dag_id}: no run appeared; trigger it in the UI")
            continue
        try:
            state = api.wait(dag_id, run["dag_run_id"], timeout)
        except AirflowApiError as exc:
            say(f"  {dag_id}: {exc}")
            continue
        with psycopg.connect(cfg.db_url("serving")) as conn:
            rows = conn.execute("SELECT monitor_date, check_name, round(value::numeric, 4), threshold, status "
                                "FROM ops.monitoring_checks WHERE model_name = %s AND status IN ('alert', 'warn') "
                                "AND monitor_date = (SELECT max(monitor_date) FROM ops.monitoring_checks "
                                "WHERE model_name = %s) ORDER BY status, check_name", (model, model)).fetchall()
        verdict = "ALERT (the planted drift, as expected)" if state == "failed" else "no alert"
        say(f"  {dag_id}: {state} - {verdict}")
        for day, check, value, threshold, status in rows:
            say(f"    {day} {status:5} {check} = {value} (threshold {threshold:g})")
        say(f"    report: {report_url(cfg.mlflow_url, model)}")
    say(f"  all checks: psql {cfg.db_url('serving')} -c \"SELECT * FROM ops.monitoring_checks "
        f"ORDER BY monitor_date DESC, status LIMIT 20\"")


def report_url(mlflow_url: str, model: str) -> str:
    """The MLflow page of the latest monitoring run's artifacts (report/index.html and its plots)."""
    from mlflow import MlflowClient

    mc = MlflowClient(tracking_uri=mlflow_url)
    experiment = mc.get_experiment_by_name(f"serving/{model}-monitoring")
    if experiment is None:
        return "(no monitoring run yet)"
    runs = mc.search_runs([experiment.experiment_id], order_by=["tags.monitor_date DESC"], max_results=1)
    if not runs:
        return "(no monitoring run yet)"
    return (f"{mlflow_url}/#/experiments/{experiment.experiment_id}/runs/{runs[0].info.run_id}/artifacts "
            f"(open report/index.html)")


def wait_for_dags(api: AirflowClient, dag_ids: list[str], timeout: float) -> None:
    for dag_id in dag_ids:
        if api.wait_for_dag(dag_id, timeout) is None:
            errors = "; ".join(f"{e.get('filename')}: {str(e.get('stack_trace', ''))[-300:]}"
                               for e in api.import_errors())
            raise DemoError(f"DAG {dag_id} is not in Airflow after {timeout:.0f}s "
                            f"({'import errors: ' + errors if errors else 'no import errors; is its file in dags/?'})")


# --- 4. show the results -------------------------------------------------------------------------------------

def show_results(cfg: StackConfig, models: list[str], tables: dict[str, str], day: dt.date) -> None:
    url = cfg.db_url("serving")
    say("\nResults in PostgreSQL:")
    with psycopg.connect(url) as conn:
        for model in models:
            query = (f"SELECT prediction_date, model_version, count(*) AS rows, round(avg(score)::numeric, 4) AS "
                     f"avg_score FROM {tables[model]} WHERE prediction_date = '{day}' GROUP BY 1, 2")
            rows = conn.execute(query).fetchall()
            say(f'  psql {url} -c "{query}"')
            for row in rows or [("(no rows yet)",)]:
                say(f"    {' | '.join(str(v) for v in row)}")


def _post_json(url: str, body: dict[str, Any]) -> tuple[int, str]:
    return _get(urllib.request.Request(url, data=json.dumps(body).encode(),
                                       headers={"Content-Type": "application/json"}))


def _get(url: str | urllib.request.Request) -> tuple[int, str]:
    """(status, body) of a request; status 0 when the server cannot be reached."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, OSError) as exc:
        return 0, str(exc)


def show_lookup(cfg: StackConfig, model: str, index: int, entity_id: int = 42) -> None:
    """The precomputed (batch) prediction of one customer, served by the app."""
    url = f"{cfg.public_url(index)}/v1/models/{model}/predictions/{entity_id}"
    status, text = _get(url)
    say(f"\nPrecomputed prediction ({model}, from today's batch run):\n  curl -s {url}\n"
        f"  -> HTTP {status}: {text.strip()[:400]}")


def show_curl(cfg: StackConfig, model: str, index: int, day: dt.date, entity_id: int = 42,
              wait_s: float = 60) -> None:
    """A live prediction for one real customer's features of `day` (raw feature values, scored by the model
    the app holds in memory)."""
    from scoring.spec import load_spec

    spec = load_spec(model)
    record = _customer_record(cfg, spec, day, entity_id)
    if record is None:
        return
    body = {"records": [record]}
    url = f"{cfg.public_url(index)}/v1/models/{model}/predict"
    # The app reloads the champion by itself (alias polling): give it a moment after training.
    deadline = time.time() + wait_s
    status, text = _post_json(url, body)
    while status == 503 and time.time() < deadline:
        time.sleep(2)
        status, text = _post_json(url, body)
    say(f"\nLive prediction ({model}, {spec.source.entity_key} {entity_id}'s features of {day}: the same score as the "
        f"precomputed one while the champion has not moved since the batch run):\n"
        f"  curl -s -X POST {url} -H 'Content-Type: application/json' \\\n"
        f"       -d {shlex.quote(json.dumps(body))}")
    say(f"  -> HTTP {status}: {text.strip()[:400]}")


# --- 6. bring your own model ----------------------------------------------------------------------------------

def train_outside_platform(db_url: str, model: str, end: dt.date, *,
                           xgb_params: dict[str, Any] | None = None) -> str:
    """What a data scientist's notebook does (README "Bring your own model"), in plain Python: read labelled rows,
    build the matrix with the platform's encoder, fit XGBoost, log the version with its signature. It trains on
    the days before the gate's held-out week of the window ending at `end`, so the gate judges it on rows it has
    not seen. No platform training code runs: the version has no gate decision yet. Returns the version."""
    import mlflow
    import pandas as pd
    import xgboost as xgb

    from scoring.model_matrix import model_matrix, model_signature
    from scoring.spec import load_spec
    from scoring.training import pip_requirements

    spec = load_spec(model)
    src = spec.source
    with psycopg.connect(db_url) as conn:
        cur = conn.execute(f"SELECT {', '.join(spec.feature_names)}, {spec.label} FROM {src.table} "  # noqa: S608
                           f"WHERE {src.date_column} >= %s AND {src.date_column} < %s AND {spec.label} IS NOT NULL",
                           (end - dt.timedelta(days=spec.training.history_days),
                            end - dt.timedelta(days=spec.training.holdout_days)))
        df = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
    m = model_matrix(spec, df)  # the platform's encoder: spec order, category codes, NaN for missing
    y = df[spec.label].astype(float)[m.valid]
    params = {"n_estimators": 60, "max_depth": 4, "learning_rate": 0.2, **(xgb_params or {})}
    model_cls = xgb.XGBClassifier if spec.is_classifier else xgb.XGBRegressor
    fitted = model_cls(**params).fit(m.features, y)
    mlflow.set_experiment(f"notebooks/{model}")
    with mlflow.start_run(run_name=f"notebook_{model}"):
        info = mlflow.xgboost.log_model(fitted, name="model", registered_model_name=model,
                                        signature=model_signature(spec, m.features, fitted.predict(m.features)),
                                        pip_requirements=pip_requirements())
    return str(info.registered_model_version)


def show_bring_your_own(cfg: StackConfig, timeout: float, model: str = "churn") -> None:
    """A version of `model` trained outside the platform (train_outside_platform), judged by evaluate_<model>
    through Airflow's REST API like any version; prints the gate's decision and reason from the version's tags."""
    import mlflow
    from mlflow import MlflowClient

    api = AirflowClient(cfg.airflow_url, cfg.admin_user, cfg.admin_password)
    wait_for_dags(api, [f"evaluate_{model}"], timeout=180)
    mlflow.set_tracking_uri(cfg.mlflow_url)
    today = dt.datetime.now(dt.UTC).date()
    say(f"\nBring your own model ({model} trained in plain Python, judged by evaluate_{model}):")
    version = train_outside_platform(cfg.db_url("serving"), model, today)
    say(f"  logged {model} version {version} with scoring.model_matrix (README: Bring your own model)")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    run_id = f"byo__v{version}__{now:%Y%m%dT%H%M%S}"
    api.trigger(f"evaluate_{model}", run_id, now, conf={"version": version})
    say(f"  evaluate_{model}: triggered run {run_id} with conf {{\"version\": \"{version}\"}}")
    state = api.wait(f"evaluate_{model}", run_id, timeout)
    tags = MlflowClient(tracking_uri=cfg.mlflow_url).get_model_version(model, version).tags
    say(f"  evaluate_{model}: {state}; decision: {tags.get('gate.decision', 'none')}; "
        f"reason: {tags.get('gate.reason', '(none recorded)')}")
    if tags.get("gate.decision") == "promoted":
        say(f"  version {version} is the champion: serving reloads it, predict_{model} re-scores today")
    elif tags.get("gate.challenger") == "true":
        say(f"  version {version} is the challenger: the nightly run scores it in shadow")


def _customer_record(cfg: StackConfig, spec: Any, day: dt.date, entity_id: int) -> dict[str, Any] | None:
    """One customer's raw feature values of `day`, as a JSON client sends them (None: no row that day)."""
    cols = ", ".join(spec.feature_names)
    with psycopg.connect(cfg.db_url("serving")) as conn:
        cur = conn.execute(f"SELECT {cols} FROM {spec.source.table} WHERE {spec.source.date_column} = %s "
                           f"AND {spec.source.entity_key} = %s", (day, entity_id))
        names = [d.name for d in cur.description]
        row = cur.fetchone()
    return None if row is None else json.loads(json.dumps(dict(zip(names, row, strict=True)), default=float))


def show_reasons(cfg: StackConfig, model: str, index: int, day: dt.date, entity_id: int = 42) -> None:
    """The three features that pushed one customer's score most: from the nightly reasons table (written with
    the day's scores), then from the live path (the same features scored with "explain")."""
    from scoring.spec import load_spec
    from scoring.store import reasons_table

    spec = load_spec(model)
    key = spec.source.entity_key
    query = (f"SELECT rank, feature, coalesce(category, value::text) AS value, round(contribution::numeric, 4) "
             f"FROM {reasons_table(spec)} WHERE prediction_date = '{day}' AND {key} = {entity_id} ORDER BY rank "
             f"LIMIT 3")
    with psycopg.connect(cfg.db_url("serving")) as conn:
        rows = conn.execute(query).fetchall()
    say(f"\nWhy {key} {entity_id} scored as it did ({model}, contributions in log-odds; > 0 raises the score):")
    say(f"  nightly table:  psql {cfg.db_url('serving')} -c \"{query}\"")
    for rank, feature, value, contribution in rows or [("-", "(no stored reasons for the day)", "", "")]:
        say(f"    {rank}. {feature} = {value}: {contribution}")
    record = _customer_record(cfg, spec, day, entity_id)
    if record is None:
        return
    body = {"records": [record], "explain": {"top_k": 3}}
    url = f"{cfg.public_url(index)}/v1/models/{model}/predict"
    status, text = _post_json(url, body)
    say(f"  live path:      curl -s -X POST {url} -H 'Content-Type: application/json' -d '{{..., \"explain\": "
        f"{{\"top_k\": 3}}}}'")
    if status != 200:
        say(f"    -> HTTP {status}: {text.strip()[:300]}")
        return
    reasons = json.loads(text)["predictions"][0]["explanation"]["contributions"]
    for rank, reason in enumerate(reasons, start=1):
        say(f"    {rank}. {reason['feature']} = {reason['value']}: {reason['contribution']:.4f}")


# --- main ----------------------------------------------------------------------------------------------------

def demo(cfg: StackConfig, retrain: bool, days: int, customers: int, timeout: float,
         drift_from: dt.date | None = None) -> None:
    from scoring.spec import load_specs

    specs = load_specs()
    today = dt.datetime.now(dt.UTC).date()
    seed_features(cfg.db_url("serving"), today, days, customers)

    try:
        api = AirflowClient(cfg.airflow_url, cfg.admin_user, cfg.admin_password)
    except (AirflowApiError, OSError) as exc:
        raise DemoError(f"Airflow is not reachable at {cfg.airflow_url} ({exc}); run `make up` first") from exc
    models = list(specs)
    wait_for_dags(api, [f"train_{m}" for m in models], timeout=180)
    if drift_from is not None and drift_from <= today:
        plant_drift(api, cfg.db_url("serving"), drift_from, today, customers)

    to_train = []
    for model in models:
        version = None if retrain else has_champion(cfg.mlflow_url, model)
        if version:
            say(f"training: {model} already has a champion (version {version}); skipped (--retrain to train again)")
        else:
            to_train.append(model)
    trained_at = dt.datetime.now(dt.UTC)
    if to_train:
        say(f"training through Airflow ({cfg.airflow_url}): {', '.join(to_train)}")
        if retrain:
            now = dt.datetime.now(dt.UTC).replace(microsecond=0)
            run_and_wait(api, [(f"train_{m}", f"demo__{now:%Y%m%dT%H%M%S}", now) for m in to_train], timeout)
        else:
            train_once(api, to_train, timeout)
    champions = {m: has_champion(cfg.mlflow_url, m) for m in models}
    for model, version in champions.items():
        if version:
            say(f"  {model}: champion is version {version} ({cfg.mlflow_url}/#/models/{model})")
        else:
            say(f"  {model}: NO champion - {gate_refusal(cfg.mlflow_url, model)}")

    # predict DAGs are optional (another part of the platform); only wait for them when a DAG file defines them
    expected = any("predict_" in path.read_text() for path in (REPO / "dags").glob("*.py"))
    predict = [m for m in models if expected and champions[m]
               and api.wait_for_dag(f"predict_{m}", timeout=60) is not None]
    if predict:
        midnight = dt.datetime.combine(today, dt.time(), tzinfo=dt.UTC)
        say(f"batch predictions for {today}: {', '.join(predict)}")
        runs = []
        for m in predict:
            # a promotion publishes the champion Asset: predict_<m> is already re-scoring with the new champion
            promoted = m in to_train and wait_for_new_run(api, f"predict_{m}", trained_at, ("asset_triggered",),
                                                          timeout=90)
            if promoted:
                say(f"  predict_{m}: run {promoted['dag_run_id']} triggered by the promotion")
                runs.append((f"predict_{m}", promoted["dag_run_id"], midnight))
            else:
                runs.append((f"predict_{m}", f"demo__{today}", midnight))
        predicted_at = dt.datetime.now(dt.UTC)
        run_and_wait(api, runs, timeout)
        show_results(cfg, predict, {m: specs[m].prediction_table for m in predict}, today)
        show_monitoring(api, cfg, predict, predicted_at - dt.timedelta(minutes=10), timeout)
    elif not expected:
        say("batch predictions: no predict_<model> DAG in this checkout yet; skipped")

    online = [m for m in models if specs[m].serving.online]  # serving ports follow this order (make up)
    shown = next((m for m in online if champions[m]), None)
    if shown:
        if shown in predict:
            show_lookup(cfg, shown, online.index(shown))
        show_curl(cfg, shown, online.index(shown), today)
        if shown in predict and specs[shown].batch.explain is not None:
            show_reasons(cfg, shown, online.index(shown), today)
    say(f"\nAirflow UI: {cfg.airflow_url} (login {cfg.admin_user} / {cfg.admin_password}) · MLflow: {cfg.mlflow_url}")
    refused = [m for m, version in champions.items() if not version]
    if refused:
        # A refusal is the gate doing its job (e.g. the latency budget on a busy machine), not a crash; the
        # demo is incomplete though, and a re-run retrains exactly these models.
        raise DemoError(f"no champion for {', '.join(refused)} (see the gate's reason above); "
                        "run `make demo` again to retrain only those")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--retrain", action="store_true", help="train again even when a champion exists")
    parser.add_argument("--days", type=int, default=35, help="days of feature history (default 35)")
    parser.add_argument("--customers", type=int, default=20_000, help="customers per day (default 20000)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for each DAG run")
    parser.add_argument("--drift-from", type=dt.date.fromisoformat, default=dt.datetime.now(dt.UTC).date(),
                        metavar="YYYY-MM-DD", help="plant the demo data's drift from this date on (default: today)")
    parser.add_argument("--no-drift", action="store_true", help="no planted drift")
    parser.add_argument("--bring-your-own", action="store_true",
                        help="only: log a churn version trained outside the platform and gate it (after make demo)")
    args = parser.parse_args(argv)
    began = time.monotonic()
    try:
        if args.bring_your_own:
            show_bring_your_own(StackConfig.from_env(), args.timeout)
        else:
            demo(StackConfig.from_env(), args.retrain, args.days, args.customers, args.timeout,
                 None if args.no_drift else args.drift_from)
    except (DemoError, AirflowApiError, ConfigError, psycopg.Error) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    say(f"(demo in {time.monotonic() - began:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
