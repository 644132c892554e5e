"""The monitoring maths on known inputs (values worked out by hand), the spec's `monitoring:` block, and the
report files. No services needed, except the one check that SQL's width_bucket bins like the profile does."""

from __future__ import annotations

import copy
import datetime as dt
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from scoring.monitoring.checks import (
    PSI_EPSILON,
    CheckResult,
    degradation,
    histogram_psi,
    judge,
    psi,
    relative_change,
    score_agreement,
    worst,
)
from scoring.monitoring.metrics import defined, metric_value
from scoring.monitoring.profile import (
    Histogram,
    ReferenceProfile,
    category_histogram,
    decile_edges,
    numeric_histogram,
)
from scoring.monitoring.report import ReportData, write_report
from scoring.spec import MonitoringConfig, SpecError, Threshold, load_specs, parse_specs

REPO = Path(__file__).resolve().parent.parent
DOCUMENT = yaml.safe_load((REPO / "models.yaml").read_text())


# -- PSI ---------------------------------------------------------------------------------------------------------


def test_psi_by_hand():
    # p = (0.5, 0.5), q = (0.25, 0.75): (0.25 - 0.5) ln(0.25/0.5) + (0.75 - 0.5) ln(0.75/0.5)
    #   = 0.25 ln 2 + 0.25 ln 1.5 = 0.25 * (0.693147 + 0.405465) = 0.274653
    assert psi([50, 50], [25, 75]) == pytest.approx(0.274653, abs=1e-6)
    assert psi([10, 20, 30], [1, 2, 3]) == 0.0  # same proportions, any totals
    # PSI is symmetric in p and q: (q - p) ln(q/p) does not change sign when both flip
    assert psi([25, 75], [50, 50]) == pytest.approx(0.274653, abs=1e-6)


def test_psi_floors_empty_bins_at_epsilon():
    assert PSI_EPSILON == 1e-4
    # p = (1, 0 -> 1e-4), q = (0.5, 0.5): (0.5 - 1) ln(0.5) + (0.5 - 1e-4) ln(0.5 / 1e-4)
    #   = 0.346574 + 0.4999 * 8.517193 = 0.346574 + 4.257744 = 4.604318
    assert psi([100, 0], [50, 50]) == pytest.approx(4.604318, abs=1e-5)
    assert psi([100, 0, 0], [50, 50, 0]) == pytest.approx(4.604318, abs=1e-5)  # empty on both sides adds 0
    assert math.isnan(psi([0, 0], [1, 1])) and math.isnan(psi([1, 1], [0, 0]))
    with pytest.raises(ValueError, match="2 reference bins but 3 actual bins"):
        psi([1, 1], [1, 1, 1])


# -- histograms --------------------------------------------------------------------------------------------------


def test_numeric_bins_are_left_closed_with_open_outer_bins():
    hist = numeric_histogram(np.array([1, 2, 4.9, 5, 7, np.nan, -100, 1e9]), [2.0, 5.0])
    # (-inf, 2): 1, -100 | [2, 5): 2, 4.9 | [5, inf): 5, 7, 1e9 | missing: NaN
    assert hist.counts == [2, 2, 3] and hist.nulls == 1
    assert hist.rows == 8 and hist.null_rate == 1 / 8
    assert hist.labels() == ["<2", "[2, 5)", ">=5"]


def test_decile_edges_are_observed_values_deduplicated():
    assert decile_edges(np.array([1, 2, 3, 4] * 25)) == [1.0, 2.0, 3.0, 4.0]
    assert decile_edges(np.arange(1, 101, dtype=float)) == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0]
    assert decile_edges(np.array([np.nan, np.nan])) == []
    assert numeric_histogram(np.array([3.0, np.nan]), []).counts == [1]


def test_category_counts_keep_unknown_spellings_apart():
    hist = category_histogram(["a", "b", None, "c", "a", "A", float("nan")], ("a", "b"))
    assert hist.counts == [2, 1, 2] and hist.nulls == 2  # "c" and "A" are other values
    assert hist.labels() == ["a", "b", "(other)"]
    other = category_histogram(["a", "c"], ("a", "b"))
    assert histogram_psi(hist, other) == pytest.approx(psi([2, 1, 2], [1, 0, 1]))
    with pytest.raises(ValueError, match="do not share their bins"):
        histogram_psi(hist, category_histogram(["a"], ("a",)))


def test_sql_width_bucket_bins_like_the_profile(db_url):
    import psycopg

    values = [1, 2, 4.9, 5, 7, -100]
    with psycopg.connect(db_url) as conn:
        buckets = [conn.execute("SELECT width_bucket(%s::float8, ARRAY[2, 5]::float8[])", (v,)).fetchone()[0]
                   for v in values]
    expected = np.searchsorted([2.0, 5.0], values, side="right").tolist()
    assert buckets == expected == [0, 1, 1, 2, 2, 0]


def test_profile_json_round_trip_and_tags():
    profile = ReferenceProfile(model="m", metric="roc_auc", holdout_metric=0.8, window="[a, b)", rows=10,
                               features={"x": Histogram("numeric", [1.0], [4, 5], 1)},
                               score=Histogram("numeric", [0.5], [5, 5]), score_mean=0.4)
    again = ReferenceProfile.from_json(profile.to_json())
    assert again == profile
    assert again.tags()["monitoring.profile"] == "monitoring/reference_profile.json"
    assert again.tags()["monitoring.holdout_roc_auc"] == "0.8"


# -- the other checks --------------------------------------------------------------------------------------------


def test_judge_at_or_above_a_limit_crosses_it():
    limits = Threshold(0.1, 0.25)
    assert judge("c", 0.0999, limits).status == "ok"
    assert judge("c", 0.1, limits).status == "warn"
    alert = judge("c", 0.25, limits)
    assert alert.status == "alert" and alert.threshold == 0.25
    assert alert.describe() == "c = 0.25 >= alert threshold 0.25"
    assert judge("c", 0.05, limits).threshold == 0.1  # an ok check names the next limit, the warn one
    assert judge("c", None, limits).status == "info" and judge("c", float("nan"), limits).value is None
    assert judge("c", 3.0, None).status == "info"
    assert worst([judge("a", 0.0, limits), judge("b", 0.2, limits)]) == "warn"
    assert worst([CheckResult("a", 1.0, "info")]) == "ok"


def test_row_count_change_and_metric_degradation_by_hand():
    assert relative_change(900, 1000) == pytest.approx(0.1)
    assert relative_change(1300, 1000) == pytest.approx(0.3)
    assert math.isnan(relative_change(5, 0))
    # ROC AUC (higher is better): 0.80 at training, 0.72 realised -> (0.80 - 0.72) / 0.80 = 0.1
    assert degradation(0.80, 0.72, higher_is_better=True) == pytest.approx(0.1)
    # RMSE (lower is better): 10 at training, 11 realised -> (11 - 10) / 10 = 0.1; better is negative
    assert degradation(10.0, 11.0, higher_is_better=False) == pytest.approx(0.1)
    assert degradation(10.0, 9.0, higher_is_better=False) == pytest.approx(-0.1)


def test_realised_metrics_by_hand():
    y = np.array([0, 0, 1, 1])
    # (positive, negative) pairs ranked right: 0.35 > 0.1, 0.8 > 0.1, 0.8 > 0.4 (not 0.35 > 0.4) -> 3 of 4
    assert metric_value("roc_auc", y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)
    # errors 1, -1, 2, 0 -> sqrt((1 + 1 + 4 + 0) / 4) = sqrt(1.5)
    assert metric_value("rmse", np.array([1.0, 2, 3, 4]), np.array([2.0, 1, 5, 4])) == pytest.approx(math.sqrt(1.5))
    assert not defined("roc_auc", np.array([1, 1])) and not defined("rmse", np.array([]))
    assert defined("rmse", np.array([3.0]))


def test_champion_challenger_agreement_by_hand():
    champion = np.array([0.2, 0.6, 0.7, 0.4])
    challenger = np.array([0.3, 0.4, 0.8, 0.6])
    assert score_agreement(champion, challenger, classifier=True) == 0.5  # same class in rows 0 and 2
    assert score_agreement(np.array([100.0, 10.0]), np.array([105.0, 12.0]), classifier=False) == 0.5  # 5%, 20%


# -- models.yaml `monitoring:` --------------------------------------------------------------------------------


def _parse_with(change) -> dict:
    document = copy.deepcopy(DOCUMENT)
    change(document["models"])
    return parse_specs(document)


def test_monitoring_block_from_the_file_and_defaults():
    churn = load_specs()["churn"].monitoring
    assert churn.feature_psi == Threshold(0.1, 0.25) and churn.label_lookback_days == 7
    without = _parse_with(lambda m: m["spend"].pop("monitoring"))["spend"].monitoring
    assert without == MonitoringConfig()  # an entry without the block gets every default
    partial = _parse_with(lambda m: m["spend"].update(monitoring={"feature_psi": {"alert": 0.5}}))["spend"]
    assert partial.monitoring.feature_psi == Threshold(0.1, 0.5)
    assert partial.monitoring.reject_rate == MonitoringConfig().reject_rate


@pytest.mark.parametrize("block, message", [
    ({"psi": {"warn": 0.1}}, "key 'monitoring.psi': unknown key"),
    ({"feature_psi": {"warn": 0.1, "page": 1}}, "key 'monitoring.feature_psi.page': unknown key"),
    ({"feature_psi": {"warn": -1}}, "key 'monitoring.feature_psi.warn': must be a number >= 0, got -1"),
    ({"feature_psi": {"alert": "high"}}, "key 'monitoring.feature_psi.alert': must be a number >= 0"),
    ({"score_psi": {"warn": 0.3, "alert": 0.2}}, "key 'monitoring.score_psi': warn (0.3) must not be above alert"),
    ({"label_lookback_days": 1.5}, "key 'monitoring.label_lookback_days': must be an integer >= 0"),
    ("strict", "key 'monitoring': expected a mapping, got str"),
])
def test_bad_monitoring_blocks_name_model_and_key(block, message):
    with pytest.raises(SpecError, match="model 'churn', " + message.replace("(", r"\(").replace(")", r"\)")):
        _parse_with(lambda m: m["churn"].update(monitoring=block))


# -- the report -----------------------------------------------------------------------------------------------


def test_report_page_embeds_every_plot(tmp_path):
    ref = Histogram("numeric", [1.0, 2.0], [30, 40, 30], 3)
    today = Histogram("numeric", [1.0, 2.0], [10, 20, 70], 9)
    checks = [judge("psi.x", histogram_psi(ref, today), Threshold(0.1, 0.25)), judge("rows", 109, None)]
    data = ReportData("churn", dt.date(2026, 11, 1), 3, checks, {"x": (ref, today)},
                      score_reference=Histogram("numeric", [0.5], [50, 50]),
                      score_today=Histogram("numeric", [0.5], [40, 60]), metric="roc_auc",
                      metric_history=[(dt.date(2026, 10, 31), 0.81), (dt.date(2026, 11, 1), 0.8)], holdout_metric=0.82)
    page = write_report(data, tmp_path / "report")
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "feature_x.png", "index.html", "metric_history.png", "score_distribution.png"]
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 3  # self-contained: no external reference
    assert 'class="badge alert">alert' in text and "psi.x" in text
    assert (tmp_path / "report" / "feature_x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_monitor_dag_picks_the_days_the_predict_runs_swapped_in():
    from types import SimpleNamespace

    import airflow.settings  # noqa: F401 - puts the plugins folder on sys.path

    from airflow_tasks.monitor_tasks import monitored_days

    spec = load_specs()["churn"]
    events = {"predictions.churn": [SimpleNamespace(extra={"date": "2026-11-01", "version": "3"}),
                                    SimpleNamespace(extra={"date": "2026-10-31"})]}
    triggered = {"params": {}, "triggering_asset_events": events, "logical_date": None}
    assert monitored_days(spec, triggered) == [dt.date(2026, 10, 31), dt.date(2026, 11, 1)]
    assert monitored_days(spec, {**triggered, "params": {"date": "2026-01-02"}}) == [dt.date(2026, 1, 2)]
    by_hand = {"params": {}, "logical_date": dt.datetime(2026, 11, 3, 3, tzinfo=dt.UTC)}
    assert monitored_days(spec, by_hand) == [dt.date(2026, 11, 3)]
