"""Loading a version never runs code from its artifact, and serves only what the gate approved.

The artifact checks run on directories written by MLflow's own `save_model` (no service needed); the registry
round trips (a crafted version registered on the real MLflow server, the gate tag) need the test MLflow server.
"""

from __future__ import annotations

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
    mlflow.xgboost.save_model(model, str(path))
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
    try:
        mc.create_registered_model(name)
    except Exception:  # already there from an earlier test in the session
        pass
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
