"""Parsing a DAG file stays light. The DAG processor re-imports every file in dags/ again and again, so neither a
DAG file nor the task modules it imports may pull in MLflow, XGBoost or pandas at parse time: the task bodies
import them when they run. Each file is parsed by Airflow's own DagBag in a process of its own, forked from a fresh
interpreter that has imported only the DagBag (nothing another test or DAG file imported counts; one Airflow import
for all files, as the DAG processor itself forks per file). Airflow itself (airflow.sdk, the DagBag) imports none of
the three, so the check is strict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DAGS = REPO / "dags"
HEAVY = ("mlflow", "xgboost", "pandas")

PROBE = """
import json, os, sys
from airflow.dag_processing.dagbag import DagBag

heavy = sys.argv[1].split(",")
before = sorted(m for m in heavy if m in sys.modules)
for path in sys.argv[2:]:
    pid = os.fork()
    if pid == 0:
        bag = DagBag(dag_folder=path, safe_mode=False)
        print("PROBE " + json.dumps({"file": path, "errors": {str(k): str(v) for k, v in bag.import_errors.items()},
                                     "dags": sorted(bag.dag_ids), "before": before,
                                     "heavy": sorted(m for m in heavy if m in sys.modules)}), flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
"""


def parse_in_fresh_interpreters(*dag_files: Path) -> dict[str, dict]:
    """File path -> what parsing it imported, each file in a process of its own."""
    done = subprocess.run([sys.executable, "-c", PROBE, ",".join(HEAVY), *map(str, dag_files)], cwd=REPO,
                          env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = [json.loads(line[len("PROBE "):]) for line in done.stdout.splitlines() if line.startswith("PROBE ")]
    assert len(found) == len(dag_files), done.stdout[-3000:] + done.stderr[-3000:]
    return {parsed["file"]: parsed for parsed in found}


# A DAG file that imports the scorer at the top: the probe must catch it (the check can fail).
HEAVY_DAG = ("import datetime as dt\n\nfrom airflow.sdk import DAG\n\nimport scoring.scorer  # noqa: F401\n\n"
             "with DAG(dag_id='heavy', schedule=None, start_date=dt.datetime(2026, 1, 1)) as dag:\n    pass\n")


@pytest.fixture(scope="module")
def parsed_dags(tmp_path_factory) -> dict[str, dict]:
    """Every file in dags/ plus the planted heavy one, parsed first: what it imports must not leak into the
    processes that parse the real files after it."""
    heavy = tmp_path_factory.mktemp("probe") / "heavy_dag.py"
    heavy.write_text(HEAVY_DAG)
    parsed = parse_in_fresh_interpreters(heavy, *sorted(DAGS.glob("*.py")))
    parsed["heavy"] = parsed.pop(str(heavy))
    return parsed


@pytest.mark.parametrize("name", sorted(p.name for p in DAGS.glob("*.py")))
def test_parsing_a_dag_file_imports_no_mlflow_xgboost_or_pandas(name, parsed_dags):
    parsed = parsed_dags[str(DAGS / name)]
    assert parsed["errors"] == {} and parsed["dags"], parsed
    assert parsed["before"] == []  # Airflow's own imports bring none of them: the strict check below is ours
    assert parsed["heavy"] == [], f"{name} imports {parsed['heavy']} at parse time"


def test_the_probe_sees_a_heavy_import(parsed_dags):
    """The check can fail: a DAG file importing the scorer at the top is caught."""
    parsed = parsed_dags["heavy"]
    assert parsed["dags"] == ["heavy"] and set(HEAVY) <= set(parsed["heavy"]), parsed
