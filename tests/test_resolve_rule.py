"""One resolve-and-approve rule (scoring.registry.resolve_approved) on every path, for every registry error.

Real MLflow (the session server) holds a model `rule_churn` (churn's spec under another name, its own prediction
table) with three copies of one version logged from plain Python (stack.demo.train_outside_platform): one tagged
promoted by the gate, one with no gate decision, one the gate refused; and no `champion` alias.
Each path meets each case:

    case              predict DAG task          batch CLI          serving / async worker (ModelHolder)
    promoted          scores with it            writes it, exit 0  loads it
    no decision       fails, no retry           exit 1, named      refused once, remembered
    refused           fails, no retry           exit 1, named      refused once, remembered
    alias missing     fails, no retry           exit 1, named      nothing to serve yet (not a refusal)
    version missing   fails, no retry           exit 1, named      nothing to serve yet (not a refusal)
    MLflow down       raises for the retries    exit 1, named      keeps what it has (not a refusal)

The async worker serves through the same ModelHolder (serving/job_worker.py builds one), so its column is the holder's.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from types import SimpleNamespace

import psycopg
import pytest

MODEL = "rule_churn"


@dataclass
class Registry:
    promoted: str
    undecided: str
    refused: str
    day: dt.date


@pytest.fixture(scope="module")
def rule_model(tmp_path_factory, db_url, demo_features, mlflow_server) -> Registry:
    from scoring.registry import client
    from stack.demo import train_outside_platform
    from testing.model_copy import write_model_copy

    mp = pytest.MonkeyPatch()
    mp.setenv("MODELS_FILE", str(write_model_copy(MODEL, tmp_path_factory.mktemp("rule"), db_url)))
    mc = client()
    logged = train_outside_platform(db_url, MODEL, demo_features + dt.timedelta(days=1),
                                    xgb_params={"n_estimators": 10, "max_depth": 3})
    versions = [logged] + [str(mc.copy_model_version(f"models:/{MODEL}/{logged}", MODEL).version) for _ in (1, 2)]
    for version, decision in zip(versions, ("promoted", None, "refused"), strict=True):
        if decision is not None:
            mc.set_model_version_tag(MODEL, version, "gate.decision", decision)
    yield Registry(*versions, demo_features)
    mp.undo()


def _mlflow_down(monkeypatch) -> None:
    from testing.ports import free_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_run(1)}")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")


CASES = ["promoted", "undecided", "refused", "alias_missing", "version_missing", "mlflow_down"]


def _ref(reg: Registry, case: str) -> str:
    return {"promoted": reg.promoted, "undecided": reg.undecided, "refused": reg.refused,
            "alias_missing": "champion", "version_missing": "9999", "mlflow_down": reg.promoted}[case]


# The message each refusal names (the same on every path: it is resolve_approved's).
def _named(reg: Registry, case: str) -> str:
    return {"undecided": f"model '{MODEL}' version {reg.undecided} was not promoted by the gate: it has no gate "
                         f"decision (gate.decision=None)",
            "refused": f"model '{MODEL}' version {reg.refused} was not promoted by the gate: it was refused by "
                       f"the gate (gate.decision='refused')",
            "alias_missing": f"model '{MODEL}' has no version with alias 'champion'",
            "version_missing": f"model '{MODEL}' version 9999 does not exist in the registry",
            "mlflow_down": "MLflow is unreachable"}[case]


@pytest.mark.parametrize("case", CASES)
def test_predict_dag_resolve_task(rule_model, case, monkeypatch):
    import airflow.settings  # noqa: F401 - puts the plugins folder on sys.path
    from airflow.sdk.exceptions import AirflowFailException

    from airflow_tasks.predict_tasks import resolve_version
    from scoring.registry import RegistryUnavailableError
    from scoring.spec import load_spec

    ref = _ref(rule_model, case)
    context = {"params": {"model_version": None if ref == "champion" else ref},
               "dag_run": SimpleNamespace(run_type="manual")}
    if case == "mlflow_down":
        _mlflow_down(monkeypatch)
    spec = load_spec(MODEL)
    if case == "promoted":
        assert resolve_version(spec, context) == rule_model.promoted
        return
    expected = RegistryUnavailableError if case == "mlflow_down" else AirflowFailException  # only MLflow retries
    with pytest.raises(expected) as info:
        resolve_version(spec, context)
    assert _named(rule_model, case) in str(info.value)


def _stored_versions(db_url: str, day: dt.date) -> set[int]:
    with psycopg.connect(db_url) as conn:
        return {v for (v,) in conn.execute(f"SELECT DISTINCT model_version FROM predictions.{MODEL} "  # noqa: S608
                                           "WHERE prediction_date = %s", (day,)).fetchall()}


@pytest.mark.parametrize("case", CASES)
def test_batch_cli(rule_model, case, monkeypatch, capsys, db_url):
    from scoring import batch

    ref = _ref(rule_model, case)
    if case == "mlflow_down":
        _mlflow_down(monkeypatch)
    day = rule_model.day - dt.timedelta(days=CASES.index(case))  # a date of its own per case
    args = ["--model", MODEL, "--date", str(day), "--shards", "1"]
    code = batch.main(args + ([] if ref == "champion" else ["--version", ref]))
    out, err = capsys.readouterr()
    if case == "promoted":
        assert code == 0, err
        assert json.loads(out.splitlines()[-1])["gate_decision"] == "promoted"
        assert _stored_versions(db_url, day) == {int(ref)}
        return
    assert code == 1 and out == ""
    assert f"error: '{ref}' resolves to version" in err or case in ("alias_missing", "mlflow_down")
    assert _named(rule_model, case) in err
    assert _stored_versions(db_url, day) == set()  # nothing written


@pytest.mark.parametrize("case", ["undecided", "refused"])
def test_batch_cli_override_writes_an_unpromoted_version_and_says_so(rule_model, case, monkeypatch, capsys,
                                                                     db_url):
    from scoring import batch

    version = _ref(rule_model, case)
    day = rule_model.day - dt.timedelta(days=10 + CASES.index(case))
    monkeypatch.setenv("SERVING_ALLOW_UNGATED", "true")
    code = batch.main(["--model", MODEL, "--date", str(day), "--version", version, "--shards", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"warning: wrote 2000 predictions of model '{MODEL}' with '{version}' resolves to version {version}, " \
           f"which the gate did not promote" in err
    assert "used anyway because SERVING_ALLOW_UNGATED=true" in err
    assert json.loads(out.splitlines()[-1])["ungated"] is True
    assert _stored_versions(db_url, day) == {int(version)}


@pytest.mark.parametrize("case", CASES)
def test_serving_and_worker_holder(rule_model, case, monkeypatch):
    from scoring.spec import load_spec
    from serving.model_holder import ModelHolder

    ref = _ref(rule_model, case)
    if case == "mlflow_down":
        _mlflow_down(monkeypatch)
    holder = ModelHolder(load_spec(MODEL), ref=ref, poll_interval_s=3600)
    swapped = holder.check_now()
    if case == "promoted":
        assert swapped and holder.version == ref
        return
    assert not swapped and holder.version is None
    assert _named(rule_model, case) in holder.stats.last_error
    if case in ("undecided", "refused"):  # the version's fault: refused once and remembered
        assert holder.stats.refused == 1 and ref in holder.stats.refused_versions
        assert not holder.check_now() and holder.stats.refused == 1
    else:  # nothing to serve (yet), or MLflow away: never held against a version
        assert holder.stats.refused == 0


def test_holder_override_loads_an_unpromoted_version(rule_model):
    from scoring.spec import load_spec
    from serving.model_holder import ModelHolder

    holder = ModelHolder(load_spec(MODEL), ref=rule_model.refused, poll_interval_s=3600, allow_ungated=True)
    assert holder.check_now() and holder.version == rule_model.refused


def test_holder_loads_a_refused_unpromoted_version_once_the_gate_promotes_it(rule_model):
    """The BYO order of events: `champion` moved by hand to a version never gated (refused at reload), then
    evaluate_<model> promotes that version: the holder loads it at its next poll."""
    from scoring.registry import client
    from scoring.spec import load_spec
    from serving.model_holder import ModelHolder

    mc = client()
    version = str(mc.copy_model_version(f"models:/{MODEL}/{rule_model.undecided}", MODEL).version)
    holder = ModelHolder(load_spec(MODEL), ref=version, poll_interval_s=3600)
    assert not holder.check_now() and version in holder.stats.refused_versions
    mc.set_model_version_tag(MODEL, version, "gate.decision", "promoted")
    assert holder.check_now() and holder.version == version
