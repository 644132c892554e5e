"""A small client for Airflow 3's REST API (what `make demo` uses; the README's curl examples do the same).

Auth: SimpleAuthManager's `POST /auth/token` with the stack's login returns a JWT; every call sends it as a
bearer token.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import requests

TERMINAL = {"success", "failed"}


class AirflowApiError(RuntimeError):
    pass


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        resp = self.session.post(f"{self.base_url}/auth/token", json={"username": username, "password": password},
                                 timeout=timeout)
        if resp.status_code not in (200, 201):
            raise AirflowApiError(f"Airflow login as {username!r} failed: HTTP {resp.status_code} {resp.text[:300]}")
        self.session.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def _call(self, method: str, path: str, ok: tuple[int, ...] = (200,), **kwargs: Any) -> requests.Response:
        resp = self.session.request(method, f"{self.base_url}/api/v2{path}", timeout=self.timeout, **kwargs)
        if resp.status_code not in ok:
            raise AirflowApiError(f"{method} /api/v2{path}: HTTP {resp.status_code} {resp.text[:500]}")
        return resp

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        resp = self._call("GET", f"/dags/{dag_id}", ok=(200, 404))
        return resp.json() if resp.status_code == 200 else None

    def import_errors(self) -> list[dict[str, Any]]:
        return self._call("GET", "/importErrors").json().get("import_errors", [])

    def wait_for_dag(self, dag_id: str, timeout: float) -> dict[str, Any] | None:
        """The DAG once the dag-processor has parsed it; None if it did not show up within `timeout`."""
        deadline = time.time() + timeout
        while True:
            found = self.dag(dag_id)
            if found is not None or time.time() >= deadline:
                return found
            time.sleep(2)

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any] | None:
        resp = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}", ok=(200, 404))
        return resp.json() if resp.status_code == 200 else None

    def trigger(self, dag_id: str, run_id: str, logical_date: dt.datetime,
                conf: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"dag_run_id": run_id, "logical_date": logical_date.isoformat(), "conf": conf or {}}
        return self._call("POST", f"/dags/{dag_id}/dagRuns", json=body).json()

    def clear(self, dag_id: str, run_id: str) -> None:
        """Re-run a finished run (its failed tasks and everything after them)."""
        self._call("POST", f"/dags/{dag_id}/dagRuns/{run_id}/clear", json={"dry_run": False, "only_failed": True})

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        items = self._call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
        return {f"{t['task_id']}" + (f"[{t['map_index']}]" if t.get("map_index", -1) >= 0 else ""): t["state"]
                for t in items}

    def wait(self, dag_id: str, run_id: str, timeout: float, poll: float = 3.0) -> str:
        """Poll until the run is success/failed; returns the state (raises on timeout)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            run = self.dag_run(dag_id, run_id)
            if run is None:
                raise AirflowApiError(f"{dag_id} run {run_id} disappeared")
            if run["state"] in TERMINAL:
                return run["state"]
            time.sleep(poll)
        raise AirflowApiError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s")
