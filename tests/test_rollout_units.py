"""Safe rollout without services: models.yaml `rollout:` parsing, the rollback judgement, the gateway log's
entries, and the split's nginx config accepted by a real `nginx -t` (the live behaviour: tests/test_rollout.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from scoring.rollout import Arm, RolloutError, check_percent, crossed, judge, score_psi
from scoring.spec import SpecError, load_spec, parse_specs
from stack.gateway import ensure_nginx
from stack.gateway_conf import Split, Upstreams, render
from stack.rollout import Window, parse_entry


def _with_rollout(rollout: object) -> dict:
    import yaml

    from scoring.spec import DEFAULT_SPEC_FILE

    document = yaml.safe_load(DEFAULT_SPEC_FILE.read_text())
    document["models"] = {"churn": {**document["models"]["churn"], "rollout": rollout}}
    return document


def test_rollout_defaults_and_overrides() -> None:
    spec = parse_specs(_with_rollout({"sticky": "caller", "score_psi": 0.5, "min_requests": 50}))["churn"]
    assert (spec.rollout.sticky, spec.rollout.score_psi, spec.rollout.min_requests) == ("caller", 0.5, 50)
    assert spec.rollout.p99_ratio == 1.5  # a default
    assert load_spec("churn").rollout.sticky == "entity"  # the shipped models.yaml


@pytest.mark.parametrize(("rollout", "key"), [
    ({"sticky": "customer"}, "rollout.sticky"), ({"score_psi": -1}, "rollout.score_psi"),
    ({"min_requests": 0}, "rollout.min_requests"), ({"p99_ratio": 0.5}, "rollout.p99_ratio"),
    ({"window": 5}, "rollout.window"), ("fast", "rollout")])
def test_bad_rollout_entries_name_the_key(rollout: object, key: str) -> None:
    with pytest.raises(SpecError, match=f"key '{key}'"):
        parse_specs(_with_rollout(rollout))


def test_share_must_be_a_percentage() -> None:
    assert check_percent(12.345) == 12.35
    for bad in (-1, 101, float("nan"), True):
        with pytest.raises(RolloutError):
            check_percent(bad)


def _arm(version: str, requests: int, errors: int, latency: float, scores: np.ndarray) -> Arm:
    return Arm(version, requests, errors, [latency] * requests, scores)


def test_judge_rolls_back_on_each_limit_and_only_with_enough_evidence() -> None:
    spec = load_spec("churn")
    rng = np.random.default_rng(1)
    same = rng.beta(2, 5, 1000)
    champion = _arm("1", 1000, 0, 4.0, same)
    healthy = _arm("2", 500, 0, 4.5, rng.beta(2, 5, 500))
    assert crossed(judge(spec, champion, healthy)) == []
    failing = _arm("2", 500, 25, 4.5, healthy.scores)  # 5% 5xx against 0%
    assert [v.check for v in crossed(judge(spec, champion, failing))] == ["error_rate_increase"]
    slow = _arm("2", 500, 0, 40.0, healthy.scores)
    assert [v.check for v in crossed(judge(spec, champion, slow))] == ["p99_ratio"]
    slightly = _arm("2", 500, 0, 7.0, healthy.scores)  # 1.75x, but under p99_min_increase_ms slower
    assert crossed(judge(spec, champion, slightly)) == []
    drifted = _arm("2", 500, 0, 4.5, rng.beta(5, 2, 500))
    assert [v.check for v in crossed(judge(spec, champion, drifted))] == ["score_psi"]
    few = _arm("2", 20, 10, 40.0, rng.beta(5, 2, 20))  # everything wrong, but below min_requests / min_scores
    verdicts = judge(spec, champion, few)
    assert crossed(verdicts) == [] and not any(v.judged for v in verdicts)
    labels = (rng.random(1000) < same).astype(float)
    champion.labelled = (same, labels)
    worse = _arm("2", 500, 0, 4.5, healthy.scores)
    worse.labelled = (rng.random(1000), labels)  # scores unrelated to the labels: AUC ~0.5
    assert [v.check for v in crossed(judge(spec, champion, worse))] == ["metric_degradation"]


def test_score_psi_is_zero_for_the_same_scores() -> None:
    scores = np.random.default_rng(2).random(500)
    assert score_psi(scores, scores) == pytest.approx(0, abs=1e-9)
    assert score_psi(scores, np.full(500, 0.9)) > 1


def test_log_entries_name_the_first_replica_and_its_failure() -> None:
    line = {"ts": "2026-12-02T10:00:00+00:00", "uri": "/v1/models/churn/predict", "status": 200,
            "request_time": 0.004, "upstream": "unix:/c.sock, unix:/a.sock", "upstream_status": "502, 200"}
    entry = parse_entry(json.dumps(line))
    assert entry is not None and entry.upstream == "unix:/c.sock" and entry.error and entry.model == "churn"
    assert entry.latency_ms == pytest.approx(4.0)
    assert parse_entry(json.dumps({**line, "uri": "/v1/models/churn/jobs"})) is None
    assert parse_entry(json.dumps({**line, "uri": "/gateway/health", "upstream": ""})) is None
    ok = parse_entry(json.dumps({**line, "upstream": "unix:/a.sock", "upstream_status": "200"}))
    assert ok is not None and not ok.error
    window = Window(60)
    window.add([entry, ok], now=entry.at)
    champion, canary = window.arms("churn", entry.at - 1, {"unix:/c.sock"}, {"unix:/a.sock"})
    assert (canary.requests, canary.errors, champion.requests, champion.errors) == (1, 1, 1, 0)


@pytest.mark.parametrize("sticky", ["none", "entity", "caller"])
@pytest.mark.parametrize("percent", [10, 100])
def test_split_config_is_accepted_by_nginx(tmp_path: Path, sticky: str, percent: float) -> None:
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    routes = {"churn": Upstreams(["127.0.0.1:1", "127.0.0.1:2"], canary=["127.0.0.1:3"]),
              "spend": Upstreams(["127.0.0.1:4"])}
    text = render(routes, "127.0.0.1:9", tmp_path, str(tmp_path / "access.log"),
                  splits={"churn": Split(percent, sticky), "spend": Split(50)})  # spend has no canary replicas
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    result = subprocess.run([ensure_nginx(), "-e", "stderr", "-p", str(tmp_path), "-c", str(conf), "-t", "-q"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "split_clients" in text and "pool_spend" not in text
    # the canary's upstream has the champion's replicas as backups: a failing canary is retried there
    block = text[text.index("upstream canary_churn"):]
    assert "127.0.0.1:1 max_fails=1 fail_timeout=2s backup" in block[:block.index("}")]
    plain = render(routes, "127.0.0.1:9", tmp_path, str(tmp_path / "access.log"))
    assert "split_clients" not in plain and "$pool_" not in plain  # no canary: the config is as before


def test_rollout_bench_reports_the_figures_for_the_last_line() -> None:
    """bench/rollout_bench.py imports (the lead calls it from bench/online.py) and its figures are ratios to the
    run without canary or shadow."""
    from types import SimpleNamespace

    from bench import rollout_bench

    def run(name: str, rps: float, p99: float) -> SimpleNamespace:
        return SimpleNamespace(name=name, rps=rps, p99_ms=p99, errors=0)

    runs = rollout_bench.Runs({"gw-off": run("gw-off", 2000, 10), "gw-canary10": run("gw-canary10", 1900, 11),
                               "gw-shadow": run("gw-shadow", 1700, 10)},
                              champion_p99_ms={"gw-off": 9.0, "gw-canary10": 12.0, "gw-shadow": 9.0},
                              challenger_answers=0, shadow_rows=5)
    assert rollout_bench.report(runs) == "canary_vs_off=0.95 champion_p99_vs_off=1.33 shadow_vs_off=0.85"


def test_live_rows_are_counted_by_the_version_that_scored_them(scorer) -> None:
    """serving_version_rows_total{model, version}: a canary replica's rows are told apart from its champion's."""
    from inprocess import RECORD, make_app
    from prometheus_client import REGISTRY

    def rows(version: str) -> float:
        return REGISTRY.get_sample_value("serving_version_rows_total", {"model": "churn", "version": version}) or 0.0

    app, _ = make_app(scorer)
    before = rows(scorer.version)
    answer = app.test_client().post("/v1/models/churn/predict", json={"records": [RECORD, RECORD]})
    assert answer.status_code == 200 and answer.get_json()["model_version"] == scorer.version
    assert rows(scorer.version) == before + 2


def test_window_keeps_counts_and_a_p99_close_to_the_exact_one() -> None:
    """The watcher's window: per-second counts and a latency histogram (~3% bins), old seconds dropped."""
    from stack.rollout import Entry

    rng = np.random.default_rng(3)
    latencies = rng.lognormal(1.5, 0.5, 3000)
    entries = [Entry(1000.0 + i / 100, "churn", "unix:/a.sock" if i % 10 else "unix:/c.sock", i % 50 == 0, lat)
               for i, lat in enumerate(latencies)]
    window = Window(keep_s=60)
    window.add(entries[:1500], now=1015)
    window.add(entries[1500:], now=1030)
    champion, canary = window.arms("churn", 0, {"unix:/c.sock"}, {"unix:/a.sock"})
    assert (champion.requests, canary.requests) == (2700, 300)
    assert champion.errors + canary.errors == 60
    exact = float(np.percentile([lat for i, lat in enumerate(latencies) if i % 10], 99))
    assert champion.p99_ms == pytest.approx(exact, rel=0.05)
    window.add([], now=1100)  # a minute later: nothing left
    assert window.arms("churn", 0, {"unix:/c.sock"}, {"unix:/a.sock"})[0].requests == 0


def test_a_worker_that_exits_while_the_gateway_is_listed_is_not_the_gateway_dying(monkeypatch) -> None:
    """A reload lists nginx's workers while old ones exit; one gone between the listing and the look at it
    (seen in CI: 'gateway is not running' for a live master) is simply not counted."""
    import sys

    import psutil

    from stack.gateway import GatewayError, nginx_workers

    # a master that reaps its workers as nginx's does, so an exited one leaves no zombie behind
    code = "import os,subprocess; [subprocess.Popen(['sleep','30']) for _ in range(2)]; os.wait(); os.wait()"
    master = subprocess.Popen([sys.executable, "-c", code])
    try:
        parent = psutil.Process(master.pid)
        while len(parent.children()) < 2:
            pass
        real_children = psutil.Process.children

        def children_then_one_exits(self, *args, **kwargs):  # the fault: a worker exits right after the listing
            found = real_children(self, *args, **kwargs)
            found[0].kill()
            found[0].wait(5)
            return found

        monkeypatch.setattr(psutil.Process, "children", children_then_one_exits)
        live, draining = nginx_workers(master.pid)
        monkeypatch.undo()
        survivors = {c.pid for c in parent.children()}
        assert live == survivors and len(live) == 1 and not draining
    finally:
        for child in psutil.Process(master.pid).children():
            child.kill()
        master.kill()
        master.wait()
    with pytest.raises(GatewayError, match="not running"):
        nginx_workers(master.pid)
