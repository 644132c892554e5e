"""models.yaml validation: the real file loads; every kind of mistake is a SpecError naming model and key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from scoring.spec import ExplainConfig, SpecError, load_spec, load_specs, parse_specs, validate_xgboost_params

REPO = Path(__file__).resolve().parent.parent
DOCUMENT = yaml.safe_load((REPO / "models.yaml").read_text())


def _parse_with(change) -> dict:
    document = copy.deepcopy(DOCUMENT)
    change(document["models"])
    return parse_specs(document)


def test_the_real_specs_load_with_types_and_defaults():
    specs = load_specs()
    assert set(specs) == {"churn", "spend"}
    churn, spend = specs["churn"], specs["spend"]
    assert churn.is_classifier and churn.higher_is_better and churn.metric == "roc_auc"
    assert not spend.is_classifier and not spend.higher_is_better
    assert churn.feature_names[:3] == ["tenure_months", "plan", "contract"]
    plan = churn.features[1]
    assert plan.type == "category" and plan.categories == ("basic", "standard", "premium")
    assert plan.code_of("premium") == 2 and plan.code_of("gold") is None
    assert churn.source.entity_key == "customer_id" and churn.train_schedule == "0 4 * * 0"
    assert churn.serving.online and churn.serving.latency_budget_ms == 25
    assert churn.batch.chunk_rows == 100_000  # a default, not in the file
    assert churn.batch.explain == ExplainConfig(top_k=3, method="exact", rows="all") and spend.batch.explain is None
    assert load_spec("spend") == spend


def test_explain_defaults_keep_the_night_cheap():
    """`explain: {}` (or true): exact reasons of the day's 1,000 highest scores, 3 per entity."""
    for value in ({}, True):
        specs = _parse_with(lambda m, v=value: m["spend"]["batch"].update(explain=v))
        assert specs["spend"].batch.explain == ExplainConfig(top_k=3, method="exact", rows="top", top=1000)
    specs = _parse_with(lambda m: m["churn"]["batch"].update(explain={"method": "approx", "rows": {"top": 50}}))
    assert specs["churn"].batch.explain == ExplainConfig(top_k=3, method="approx", rows="top", top=50)
    assert _parse_with(lambda m: m["churn"]["batch"].update(explain=False))["churn"].batch.explain is None


def test_models_file_env_var_and_unknown_model(tmp_path, monkeypatch):
    one = copy.deepcopy(DOCUMENT)
    del one["models"]["spend"]
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(one))
    monkeypatch.setenv("MODELS_FILE", str(path))
    assert list(load_specs()) == ["churn"]
    with pytest.raises(SpecError, match=r"no model named 'spend' \(known: churn\)"):
        load_spec("spend")


BAD = {
    # name: (change to the document's models, expected message part)
    "unknown model key": (lambda m: m["churn"].update(colour="blue"), "model 'churn', key 'colour': unknown key"),
    "unknown source key": (lambda m: m["churn"]["source"].update(schema="x"),
                           "model 'churn', key 'source.schema': unknown key"),
    "unknown feature key": (lambda m: m["spend"]["features"][2].update(default=0),
                            "model 'spend', key 'features[2].default': unknown key"),
    "unknown training key": (lambda m: m["churn"]["training"].update(epochs=3),
                             "model 'churn', key 'training.epochs': unknown key"),
    "unknown xgboost param": (lambda m: m["churn"]["xgboost"].update(n_trees=3),
                              "model 'churn', key 'xgboost.n_trees': unknown key"),
    "missing features": (lambda m: m["churn"].pop("features"), "model 'churn', key 'features': missing required key"),
    "empty features": (lambda m: m["churn"].update(features=[]), "model 'churn', key 'features': must be a non-empty"),
    "missing label": (lambda m: m["spend"].pop("label"), "model 'spend', key 'label': missing required key"),
    "missing source column": (lambda m: m["churn"]["source"].pop("date_column"),
                              "model 'churn', key 'source.date_column': missing required key"),
    "bad cron field": (lambda m: m["churn"].update(schedule="61 2 * * *"),
                       "model 'churn', key 'schedule': not a valid cron expression"),
    "cron with seconds": (lambda m: m["churn"].update(schedule="0 0 2 * * *"),
                          "model 'churn', key 'schedule': not a valid cron expression"),
    "unknown preset": (lambda m: m["spend"].update(train_schedule="@sometimes"),
                       "model 'spend', key 'train_schedule': not a valid cron expression"),
    "cron not a string": (lambda m: m["spend"].update(schedule=5), "model 'spend', key 'schedule'"),
    "bad feature type": (lambda m: m["churn"]["features"][0].update(type="string"),
                         "model 'churn', key 'features[0].type': feature 'tenure_months': must be int, float or"),
    "categories as a string": (lambda m: m["churn"]["features"][1].update(categories="basic"),
                               "model 'churn', key 'features[1].categories'"),
    "categories on a number": (lambda m: m["churn"]["features"][0].update(categories=["a"]),
                               "key 'features[0].categories': feature 'tenure_months': only category features"),
    "nullable not a bool": (lambda m: m["churn"]["features"][0].update(nullable="yes"),
                            "key 'features[0].nullable'"),
    "min_rows not a number": (lambda m: m["churn"]["training"].update(min_rows="many"),
                              "model 'churn', key 'training.min_rows': must be a positive int"),
    "negative budget": (lambda m: m["churn"]["serving"].update(latency_budget_ms=-1),
                        "model 'churn', key 'serving.latency_budget_ms': must be a positive float"),
    "bad serving mode": (lambda m: m["churn"]["serving"].update(mode="sometimes"), "key 'serving.mode'"),
    "xgboost value type": (lambda m: m["churn"]["xgboost"].update(n_estimators="150"),
                           "model 'churn', key 'xgboost.n_estimators': must be an integer >= 1, got '150'"),
    "xgboost value range": (lambda m: m["spend"]["xgboost"].update(learning_rate=2),
                            "model 'spend', key 'xgboost.learning_rate': must be a number in (0, 1]"),
    "reject threshold bool": (lambda m: m["churn"]["batch"].update(reject_threshold=True),
                              "key 'batch.reject_threshold'"),
    "metric for another task": (lambda m: m["churn"].update(metric="rmse"),
                                "model 'churn', key 'metric': 'rmse' does not fit a classification model"),
    "unknown metric": (lambda m: m["spend"].update(metric="r2"), "model 'spend', key 'metric': must be one of"),
    "bad task": (lambda m: m["spend"].update(task="ranking"), "model 'spend', key 'task'"),
    "feature listed twice": (lambda m: m["churn"]["features"].append({"name": "plan", "type": "int"}),
                             "model 'churn', key 'features': feature 'plan' is listed twice"),
    "label is a feature": (lambda m: m["churn"].update(label="tenure_months"), "model 'churn', key 'label'"),
    "entity key as feature": (lambda m: m["churn"]["features"].append({"name": "customer_id", "type": "int"}),
                              "'customer_id' is the entity key or date column"),
    "unqualified table": (lambda m: m["churn"]["source"].update(table="customer_daily"),
                          "key 'source.table': must be schema.table"),
    "holdout too long": (lambda m: m["churn"]["training"].update(holdout_days=28),
                         "key 'training.holdout_days': must be shorter than training.history_days"),
    "shared prediction table": (lambda m: m["spend"].update(prediction_table="predictions.churn"),
                                "model 'spend', key 'prediction_table': 'predictions.churn' is already the "
                                "prediction table of model 'churn'"),
    "explain unknown key": (lambda m: m["churn"]["batch"]["explain"].update(rows_per_day=3),
                            "model 'churn', key 'batch.explain.rows_per_day': unknown key"),
    "explain bad method": (lambda m: m["churn"]["batch"]["explain"].update(method="shap"),
                           "key 'batch.explain.method': must be exact or approx, got 'shap'"),
    "explain top_k zero": (lambda m: m["churn"]["batch"]["explain"].update(top_k=0),
                           "key 'batch.explain.top_k': must be a positive int, got 0"),
    "explain rows word": (lambda m: m["churn"]["batch"]["explain"].update(rows="some"),
                          "key 'batch.explain.rows': must be 'all' or {top: N}, got 'some'"),
    "explain rows top missing": (lambda m: m["churn"]["batch"]["explain"].update(rows={}),
                                 "key 'batch.explain.rows.top': missing required key"),
    "explain rows top bad": (lambda m: m["churn"]["batch"]["explain"].update(rows={"top": -5}),
                             "key 'batch.explain.rows.top': must be a positive int, got -5"),
    "explain not a mapping": (lambda m: m["spend"]["batch"].update(explain="yes"),
                              "model 'spend', key 'batch.explain': expected a mapping, got str"),
    "bad model name": (lambda m: m.update({"Churn-2": m["churn"]}), "model 'Churn-2', key 'name'"),
    "empty entry": (lambda m: m.update(churn=None), "model 'churn': the entry must be a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_entry_names_model_and_key(case):
    change, expected = BAD[case]
    with pytest.raises(SpecError) as info:
        _parse_with(change)
    assert expected in str(info.value)


def test_the_real_file_passes_every_check_above():
    assert set(_parse_with(lambda m: None)) == {"churn", "spend"}


@pytest.mark.parametrize("text, expected", [
    ("models:\n  churn: {task: regression}\n  churn: {task: classification}\n", "line 3: key 'churn' appears twice"),
    ("models: [churn", "not valid YAML"),
    ("models: {}\n", "'models' lists no model"),
    ("churn: {}\n", "the top level must be a single 'models' mapping"),
])
def test_file_level_problems(tmp_path, text, expected):
    path = tmp_path / "models.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=expected):
        load_specs(path)


def test_a_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read the model spec file"):
        load_specs(tmp_path / "nope.yaml")


def test_run_overrides_are_checked_like_the_spec():
    assert validate_xgboost_params({"n_estimators": 1, "max_depth": 1}) == {"n_estimators": 1, "max_depth": 1}
    with pytest.raises(ValueError, match=r"xgboost_overrides.n_trees: unknown XGBoost parameter"):
        validate_xgboost_params({"n_trees": 1}, where="xgboost_overrides")
    with pytest.raises(ValueError, match=r"xgboost_overrides.subsample: must be a number in \(0, 1\], got 0"):
        validate_xgboost_params({"subsample": 0}, where="xgboost_overrides")
    with pytest.raises(ValueError, match=r"xgboost_overrides.max_depth: must be an integer >= 0, got True"):
        validate_xgboost_params({"max_depth": True}, where="xgboost_overrides")
    with pytest.raises(ValueError, match=r"xgboost_overrides: expected a mapping"):
        validate_xgboost_params([1], where="xgboost_overrides")
