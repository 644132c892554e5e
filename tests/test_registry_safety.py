"""Loading a version never runs code from its artifact, and serves only what the gate approved.

The artifact checks run on directories written by MLflow's own `save_model` (no service needed); the registry
round trips (a crafted version registered on the real MLflow server, the gate tag) need the test MLflow server.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
import yaml

from scoring.registry import (
    NotApprovedError,
    UnsafeArtifactError,
    check_approved,
    load_booster,
    read_booster_artifact,
)

_EVIL = "evil_model_module"  # a module an attacker ships in the artifact; importing it leaves a marker file


def _saved_model(root: Path) -> tuple[Path, xgb.XGBClassifier, np.ndarray]:
    import mlflow.xgboost

    rng = np.random.default_rng(7)
    x = rng.random((60, 3))
    model = xgb.XGBClassifier(n_estimators=4, max_depth=2).fit(x, (x[:, 0] > 0.5).astype(int))
    path = root / "model"
    mlflow.xgboost.save_model(model, str(path), pip_requirements=["xgboost"])  # no inference subprocess (~3 s)
    return path, model, x


def _edit_mlmodel(path: Path, **xgboost_flavor: object) -> None:
    doc = yaml.safe_load((path / "MLmodel").read_text())
    doc["flavors"]["xgboost"].update(xgboost_flavor)
    (path / "MLmodel").write_text(yaml.safe_dump(doc))


def _plant_code(path: Path, marker: Path) -> None:
    code = path / "code"
    code.mkdir()
    (code / f"{_EVIL}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Evil:\n    pass\n")


def test_reads_the_booster_file_and_predicts_like_the_model(tmp_path: Path) -> None:
    path, model, x = _saved_model(tmp_path)
    booster = read_booster_artifact(path, "test model")
    got = booster.inplace_predict(x)
    np.testing.assert_array_equal(got, model.predict_proba(x)[:, 1])


def test_another_model_class_is_refused_and_nothing_is_imported(tmp_path: Path) -> None:
    path, _, _ = _saved_model(tmp_path)
    marker = tmp_path / "imported"
    _plant_code(path, marker)
    _edit_mlmodel(path, model_class=f"{_EVIL}.Evil", code="code")
    with pytest.raises(UnsafeArtifactError, match="model_class"):
        read_booster_artifact(path, "crafted")
    assert not marker.exists() and _EVIL not in sys.modules
    assert not any(str(p).startswith(str(path)) for p in sys.path)


def test_a_code_folder_is_refused_even_with_a_known_class(tmp_path: Path) -> None:
    path, _, _ = _saved_model(tmp_path)
    marker = tmp_path / "imported"
    _plant_code(path, marker)
    with pytest.raises(UnsafeArtifactError, match="code"):
        read_booster_artifact(path, "crafted")
    assert not marker.exists() and _EVIL not in sys.modules


@pytest.mark.parametrize("flavor, reason", [
    ({"data": "../../etc/passwd"}, "outside the artifact"),
    ({"data": "missing.ubj"}, "missing"),
    ({"model_format": "pickle"}, "model_format"),
])
def test_booster_file_must_be_a_booster_inside_the_artifact(tmp_path: Path, flavor: dict, reason: str) -> None:
    path, _, _ = _saved_model(tmp_path)
    _edit_mlmodel(path, **flavor)
    with pytest.raises(UnsafeArtifactError, match=reason):
        read_booster_artifact(path, "crafted")


def test_a_file_that_is_not_a_booster_is_refused(tmp_path: Path) -> None:
    path, _, _ = _saved_model(tmp_path)
    (path / "model.ubj").write_bytes(b"not a booster")
    with pytest.raises(UnsafeArtifactError, match="XGBoost cannot read"):
        read_booster_artifact(path, "crafted")


def _register_dir(path: Path, name: str) -> str:
    import mlflow
    from mlflow import MlflowClient

    mc = MlflowClient()
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(path), "model")
    with contextlib.suppress(Exception):  # already there from an earlier test in the session
        mc.create_registered_model(name)
    return str(mc.create_model_version(name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id).version)


def test_registry_round_trip_refuses_a_crafted_version(mlflow_server: str, tmp_path: Path) -> None:
    path, model, x = _saved_model(tmp_path)
    good = _register_dir(path, "registry-safety")
    np.testing.assert_array_equal(load_booster("registry-safety", good).inplace_predict(x),
                                  model.predict_proba(x)[:, 1])
    marker = tmp_path / "imported"
    _plant_code(path, marker)
    _edit_mlmodel(path, model_class=f"{_EVIL}.Evil", code="code")
    bad = _register_dir(path, "registry-safety")
    with pytest.raises(UnsafeArtifactError):
        load_booster("registry-safety", bad)
    assert not marker.exists() and _EVIL not in sys.modules


def test_only_gate_promoted_versions_are_approved(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    path, _, _ = _saved_model(tmp_path)
    version = _register_dir(path, "registry-gate")
    with pytest.raises(NotApprovedError, match="gate.decision=None"):
        check_approved("registry-gate", version)
    check_approved("registry-gate", version, allow_ungated=True)  # the documented override
    mc = MlflowClient()
    mc.set_model_version_tag("registry-gate", version, "gate.decision", "refused")
    with pytest.raises(NotApprovedError, match="'refused'"):
        check_approved("registry-gate", version)
    mc.set_model_version_tag("registry-gate", version, "gate.decision", "promoted")
    check_approved("registry-gate", version)


def _versions_in_metrics(url: str) -> list[str]:
    import requests

    text = requests.get(url + "/metrics", timeout=5).text
    return [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith("serving_model_version{")]


def test_an_alias_moved_to_an_ungated_version_is_refused_while_the_old_one_serves(
        db_url: str, trained_models: dict[str, str], tmp_path: Path) -> None:
    """Real gunicorn, real MLflow: `champion` moved by hand to a version the gate never promoted (here a copy of the
    champion's own booster with its gate tag reset) is refused at reload like a broken version: the old version
    keeps answering, the refusal is counted, logged and reported; with SERVING_ALLOW_UNGATED it would load."""
    import time

    import requests
    from mlflow import MlflowClient

    from scoring.spec import load_spec
    from serving.model_holder import ModelHolder, smoke_row
    from stack.pg import free_port
    from stack.services import stop_process
    from testing.servers import start_gunicorn

    mc = MlflowClient()
    champion = trained_models["churn"]
    ungated = str(mc.copy_model_version(f"models:/churn/{champion}", "churn").version)
    mc.set_model_version_tag("churn", ungated, "gate.decision", "pending")  # registered, never promoted
    port = free_port()
    log = tmp_path / "gunicorn.log"
    proc = start_gunicorn("churn", port, log, env={"DATABASE_URL": db_url, "SERVING_POLL_INTERVAL_S": "0.3",
                                                   "SERVING_WORKERS": "1", "SERVING_ACCESS_LOG": ""})
    url = f"http://127.0.0.1:{port}"
    record = {"records": [smoke_row(load_spec("churn"))]}  # scored live
    try:
        deadline = time.time() + 60
        while _versions_in_metrics(url) != [f"{float(champion)}"] and time.time() < deadline:
            time.sleep(0.3)
        assert _versions_in_metrics(url) == [f"{float(champion)}"]
        mc.set_registered_model_alias("churn", "champion", ungated)
        deadline = time.time() + 30
        while 'serving_model_refused_total{model="churn"} 1.0' not in requests.get(url + "/metrics", timeout=5).text:
            assert time.time() < deadline, "the ungated version was not refused"
            time.sleep(0.3)
        time.sleep(1.0)  # more polls: it stays refused (remembered, not retried)
        answer = requests.post(url + "/v1/models/churn/predict", json=record, timeout=5)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == champion
        assert _versions_in_metrics(url) == [f"{float(champion)}"]
        assert "serving_model_refused_total{model=\"churn\"} 1.0" in requests.get(url + "/metrics", timeout=5).text
        assert f"version {ungated} refused: NotApprovedError" in log.read_text()
        # the documented override loads it (an in-process holder against the same registry)
        holder = ModelHolder(load_spec("churn"), poll_interval_s=3600, allow_ungated=True)
        assert holder.check_now() and holder.version == ungated
    finally:
        mc.set_registered_model_alias("churn", "champion", champion)  # other tests expect the session champion
        stop_process(proc)
