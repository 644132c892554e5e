"""MLflow behind its own basic-auth app (`mlflow server --app-name basic-auth` with mlflow/basic_auth.ini, as in
docker-compose.yaml): no credentials answer 401, and the users made by stack/mlflow_auth.py can do only their part
(serving reads registered models, airflow may move them). A real server on a free port, its own stores."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from stack.mlflow_auth import ensure_users
from stack.pg import free_port
from stack.services import mlflow_server_command, stop_process, wait_http

REPO = Path(__file__).resolve().parent.parent
ADMIN_PASSWORD = "admin-pw-for-the-test-1"
PASSWORDS = {"MLFLOW_AIRFLOW_PASSWORD": "airflow-password-1", "MLFLOW_SERVING_PASSWORD": "serving-password-1",
             "MLFLOW_WORKER_PASSWORD": "worker-password-1"}
SEARCH = "/api/2.0/mlflow/registered-models/search"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-auth")
    shipped = (REPO / "mlflow" / "basic_auth.ini").read_text()
    assert "database_uri = sqlite:////opt/mlflow-auth/basic_auth.db" in shipped
    ini = root / "basic_auth.ini"  # the shipped config, its users' store moved under the test's folder
    ini.write_text(shipped.replace("sqlite:////opt/mlflow-auth/basic_auth.db", f"sqlite:///{root}/auth.db"))
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key"}
    cmd = [*mlflow_server_command(f"sqlite:///{root}/mlflow.db", root / "artifacts", port), "--app-name",
           "basic-auth"]
    with open(root / "mlflow.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", 120, proc, "MLflow (basic-auth)")
        yield url
    finally:
        stop_process(proc)


def test_no_or_wrong_credentials_answer_401(auth_server: str) -> None:
    assert requests.get(auth_server + "/health", timeout=60).status_code == 200  # the healthcheck stays open
    assert requests.get(auth_server + SEARCH, timeout=60).status_code == 401
    wrong = requests.get(auth_server + SEARCH, auth=("admin", "not-the-password"), timeout=60)
    assert wrong.status_code == 401
    assert requests.get(auth_server + SEARCH, auth=("admin", ADMIN_PASSWORD), timeout=60).status_code == 200


def test_each_client_has_its_user_and_serving_only_reads(auth_server: str, monkeypatch) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    assert ensure_users(auth_server, PASSWORDS, models=["churn"]) == ["airflow", "serving", "worker"]
    assert ensure_users(auth_server, PASSWORDS, models=["churn"]) == ["airflow", "serving", "worker"]  # idempotent

    def as_user(user: str) -> MlflowClient:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORDS[f"MLFLOW_{user.upper()}_PASSWORD"])
        return MlflowClient(tracking_uri=auth_server)

    serving = as_user("serving")
    assert serving.get_registered_model("churn").name == "churn"  # reads
    # it cannot change a model it did not create: no tag, no alias, no deletion (MLflow's basic auth does let any
    # user create new models of its own, which serving never loads)
    for write in (lambda: serving.set_registered_model_tag("churn", "owner", "serving"),
                  lambda: serving.set_registered_model_alias("churn", "champion", "1"),
                  lambda: serving.delete_registered_model("churn")):
        with pytest.raises(MlflowException, match="PERMISSION_DENIED|Permission denied"):
            write()
    airflow = as_user("airflow")
    airflow.set_registered_model_tag("churn", "owner", "airflow")  # the trainer may change the model
    assert as_user("worker").get_registered_model("churn").tags["owner"] == "airflow"
    plain = requests.get(auth_server + SEARCH, auth=("serving", PASSWORDS["MLFLOW_SERVING_PASSWORD"]), timeout=60)
    assert plain.status_code == 200
