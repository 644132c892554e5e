"""DAG parsing: the real dags/ folder loads cleanly; a bad models.yaml becomes an import error naming model and
key (what the DAG processor shows in the UI) instead of crashing the parse of the other DAG files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"


def _dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS), safe_mode=False)


def test_real_dagbag_has_no_import_errors_and_the_expected_dags():
    bag = _dagbag()
    assert bag.import_errors == {}
    assert {"train_churn", "train_spend", "demo_features"} <= set(bag.dag_ids)
    churn = bag.dags["train_churn"]
    assert churn.catchup is False and churn.max_active_runs == 1
    assert [t.task_id for t in churn.topological_sort()] == ["check_window", "train_and_register", "gate"]
    assert {"end_date", "xgboost_overrides"} <= set(churn.params.keys())
    assert "training" in churn.tags
    assert bag.dags["demo_features"].params["customers"] == 20_000


def _spec_with(mutate) -> dict:
    document = yaml.safe_load((REPO / "models.yaml").read_text())
    mutate(document["models"])
    return document


BAD_SPECS = {
    "unknown key": (lambda m: m["churn"].update(colour="blue"), "model 'churn', key 'colour': unknown key"),
    "missing feature list": (lambda m: m["spend"].pop("features"),
                             "model 'spend', key 'features': missing required key"),
    "bad cron": (lambda m: m["churn"].update(schedule="61 2 * * *"),
                 "model 'churn', key 'schedule': not a valid cron expression"),
    "bad train cron": (lambda m: m["spend"].update(train_schedule="@sometimes"),
                       "model 'spend', key 'train_schedule': not a valid cron expression"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_is_an_import_error_naming_model_and_key(case, tmp_path, monkeypatch):
    mutate, expected = BAD_SPECS[case]
    bad = tmp_path / "models.yaml"
    bad.write_text(yaml.safe_dump(_spec_with(mutate)))
    monkeypatch.setenv("MODELS_FILE", str(bad))

    bag = _dagbag()  # must not raise: the error belongs to the file, not to the processor

    errors = {Path(path).name: message for path, message in bag.import_errors.items()}
    assert "train_models.py" in errors, bag.import_errors
    assert expected in errors["train_models.py"]
    assert "SpecError" in errors["train_models.py"]
    assert not any(dag_id.startswith("train_") for dag_id in bag.dag_ids)
    assert "demo_features" in bag.dag_ids  # the other files of the folder still parse
