"""Reasons (per-feature contributions): the scorer's core, and the nightly reasons table swapped in with the
scores (models.yaml batch.explain), against the real PostgreSQL and MLflow registry."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from psycopg import sql

from scoring import batch
from scoring.db import connect
from scoring.spec import ExplainConfig
from tests.test_batch import features, kill_when_stalled, stage_tables, stored

REPO = Path(__file__).resolve().parent.parent
# sum of contributions + bias against the margin: float32 sums of up to 13 terms (regression margins ~100s)
FLOAT32_TOL = {"rtol": 2e-6, "atol": 1e-4}


@pytest.fixture(scope="module")
def ready(db_url, trained_models, demo_features):
    return demo_features


def champion(spec):
    from scoring.scorer import Scorer

    return Scorer.from_registry(spec, "champion")


def reasons(db_url: str, spec, day: dt.date) -> pd.DataFrame:
    key = spec.source.entity_key
    with connect(db_url) as conn:
        rows = conn.execute(sql.SQL("SELECT {k}, rank, feature, value, category, contribution, model_version, "
                                    "run_id FROM {t} WHERE prediction_date = %s ORDER BY {k}, rank").format(
            k=sql.Identifier(key), t=sql.Identifier(*f"{spec.prediction_table}_reasons".split("."))),
            (day,)).fetchall()
    return pd.DataFrame(rows, columns=[key, "rank", "feature", "value", "category", "contribution",
                                       "model_version", "run_id"])


@pytest.mark.parametrize("name", ["churn", "spend"])
@pytest.mark.parametrize("method", ["exact", "approx"])
def test_contributions_sum_to_the_margin(name, method, specs, db_url, ready):
    spec = specs[name]
    scorer = champion(spec)
    frame = features(db_url, spec, ready)
    matrix = scorer.encode(frame[spec.feature_names]).matrix
    contributions = scorer.contributions(matrix, method)
    assert contributions.values.shape == (len(frame), len(spec.features))
    np.testing.assert_allclose(contributions.margins, scorer.margins(matrix), **FLOAT32_TOL)
    scores = scorer.predict_matrix(matrix).scores
    expected = 1 / (1 + np.exp(-contributions.margins)) if spec.is_classifier else contributions.margins
    np.testing.assert_allclose(expected, scores, **FLOAT32_TOL)
    # a category is one contribution, reported with the category the row has
    record = contributions.records(top_k=None)[0]
    assert sorted(c["feature"] for c in record["contributions"]) == sorted(spec.feature_names)
    plan = next(c for c in record["contributions"] if c["feature"] == "plan")
    assert plan["value"] == frame["plan"].iloc[0]


def test_nightly_reasons_are_the_top_k_of_every_row(specs, db_url, ready, trained_models):
    spec, day = specs["churn"], ready - dt.timedelta(days=3)
    assert spec.batch.explain == ExplainConfig(top_k=3, method="exact", rows="all")  # models.yaml opts in
    batch.run_batch(spec, day, "test_reasons_all", chunk_rows=700)
    frame = features(db_url, spec, day)
    got = reasons(db_url, spec, day)
    key = spec.source.entity_key
    assert len(got) == 3 * len(frame) and got.groupby(key)["rank"].apply(lambda r: list(r) == [1, 2, 3]).all()
    assert set(got["run_id"]) == {"test_reasons_all"} and set(got["model_version"]) == {int(trained_models["churn"])}
    scorer = champion(spec)
    encoded = scorer.encode(frame[spec.feature_names])
    expected = scorer.contributions(encoded.matrix).records(top_k=3)
    for row in (0, 41, len(frame) - 1):
        mine = got[got[key] == frame[key].iloc[row]]
        want = expected[row]["contributions"]
        assert mine["feature"].tolist() == [c["feature"] for c in want]
        np.testing.assert_allclose(mine["contribution"], [c["contribution"] for c in want], rtol=1e-6)
        for (_, stored_row), c in zip(mine.iterrows(), want, strict=True):
            if isinstance(c["value"], str):
                assert stored_row["category"] == c["value"]
            elif c["value"] is None:
                assert pd.isna(stored_row["value"]) and stored_row["category"] is None
            else:
                assert stored_row["value"] == pytest.approx(c["value"])
    ranked = got.assign(size=got["contribution"].abs()).groupby(key)["size"].apply(
        lambda s: bool((np.diff(s.to_numpy()) <= 1e-7).all()))
    assert ranked.all()  # rank 1 is the largest |contribution|


def test_top_n_rows_and_explain_off(specs, db_url, ready):
    """rows: {top: N} keeps the day's N highest scores over both shards; turning explain off drops the day's
    reasons in the same swap (they never describe other scores than the stored ones)."""
    spec, day = specs["churn"], ready - dt.timedelta(days=2)
    top = dataclasses.replace(spec, batch=dataclasses.replace(
        spec.batch, explain=ExplainConfig(top_k=2, method="approx", rows="top", top=25)))
    batch.run_batch(top, day, "test_reasons_top", shards=2, chunk_rows=300)
    scores = stored(db_url, spec, day)
    key = spec.source.entity_key
    want = scores.sort_values(["score", key], ascending=[False, True])[key].head(25)
    got = reasons(db_url, spec, day)
    assert sorted(set(got[key])) == sorted(want) and len(got) == 50
    assert not stage_tables(db_url)
    off = dataclasses.replace(spec, batch=dataclasses.replace(spec.batch, explain=None))
    batch.run_batch(off, day, "test_reasons_off")
    assert reasons(db_url, spec, day).empty and len(stored(db_url, spec, day)) == len(scores)


def test_kill_while_explaining_leaves_neither(specs, db_url, ready, mlflow_server):
    """Killed while explaining (scores of the chunk staged, reasons being computed): the day keeps its previous
    scores AND reasons, not a mix; the next run replaces both."""
    spec, day = specs["churn"], ready - dt.timedelta(days=7)
    batch.run_batch(spec, day, "test_reasons_before_kill")
    before, before_reasons = stored(db_url, spec, day), reasons(db_url, spec, day)
    assert len(before_reasons) == 3 * len(before)
    kill_when_stalled(db_url, mlflow_server, day, "test_reasons_killed", "--stall-in-explain")
    pd.testing.assert_frame_equal(before, stored(db_url, spec, day))
    pd.testing.assert_frame_equal(before_reasons, reasons(db_url, spec, day))
    batch.run_batch(spec, day, "test_reasons_after_kill")
    assert set(reasons(db_url, spec, day)["run_id"]) == {"test_reasons_after_kill"}
    assert not stage_tables(db_url)


class _DemoConfig:
    """What stack.demo's functions read of a StackConfig: the database and the app's public URL."""

    def __init__(self, db_url: str, app_url: str) -> None:
        self._db, self._app = db_url, app_url

    def db_url(self, name: str) -> str:
        return self._db

    def public_url(self, index: int) -> str:
        return self._app


def test_live_lookup_and_demo_give_the_nightly_reasons(specs, db_url, ready, mlflow_server, platform, capsys):
    """Through a real gunicorn: live predict's reasons of customer 42's features equal the nightly row's, the
    lookup returns the stored ones, and the demo prints the same three from both."""
    import requests

    from stack.demo import _customer_record, show_reasons
    from stack.pg import free_port

    spec, day = specs["churn"], ready
    batch.run_batch(spec, day, "test_reasons_served")
    port = free_port()
    platform.gunicorn("churn", port, env={"DATABASE_URL": db_url, "MLFLOW_TRACKING_URI": mlflow_server})
    url = f"http://127.0.0.1:{port}/v1/models/churn"
    record = _customer_record(_DemoConfig(db_url, url), spec, day, 42)
    live = requests.post(f"{url}/predict", json={"records": [record], "explain": {"top_k": "all"}}, timeout=30)
    assert live.status_code == 200, live.text
    item = live.json()["predictions"][0]
    margin = champion(spec).margins(champion(spec).encode([record]).matrix)[0]
    total = item["explanation"]["bias"] + sum(c["contribution"] for c in item["explanation"]["contributions"])
    np.testing.assert_allclose(total, margin, **FLOAT32_TOL)
    nightly = reasons(db_url, spec, day).query("customer_id == 42")
    top3 = item["explanation"]["contributions"][:3]
    assert nightly["feature"].tolist() == [c["feature"] for c in top3]
    np.testing.assert_allclose(nightly["contribution"], [c["contribution"] for c in top3], rtol=1e-6)
    lookup = requests.get(f"{url}/predictions/42", params={"explain": "true", "date": str(day)}, timeout=30).json()
    assert lookup["explanation"]["source"] == "precomputed"
    assert [c["feature"] for c in lookup["explanation"]["contributions"]] == nightly["feature"].tolist()

    capsys.readouterr()
    show_reasons(_DemoConfig(db_url, f"http://127.0.0.1:{port}"), "churn", 0, day)
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines() if line.strip()[:2] in ("1.", "2.", "3.")]
    assert len(lines) == 6, out
    assert [line.split(" = ")[0] for line in lines[:3]] == [line.split(" = ")[0] for line in lines[3:]], out
