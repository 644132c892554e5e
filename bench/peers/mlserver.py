"""MLServer (Seldon) serving the same booster, for bench/online.py: one row per request over its Open Inference
REST endpoint (`POST /v2/models/<model>/infer`, one FP32 tensor of shape [1, n_features]).

Settings and why:
- its own venv (`.local/bench-venvs/mlserver`, built from bench/peers/mlserver-requirements.txt when missing):
  MLServer pins its own FastAPI/pydantic stack, which must not touch the project's pins;
- the booster saved as `model.json` with `model-settings.json` naming `mlserver_xgboost.XGBoostModel`;
- `parallel_workers: 0`: inference in the server process itself. 1.7.1 fails to start with 2 here ("no current
  event loop" in its worker pool); with 0 it is one process with an asyncio server, MLServer's single-process
  mode, measured ~575 req/s by hand on this machine;
- gRPC and the metrics server on free ports of their own (their defaults 8081/8082 may be taken).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REQUIREMENTS = Path(__file__).resolve().parent / "mlserver-requirements.txt"
DEFAULT_VENV = Path(__file__).resolve().parents[2] / ".local" / "bench-venvs" / "mlserver"


def ensure_venv(venv: Path | None = None) -> Path:
    """The `mlserver` executable. A venv given by the caller is used as it is; the bench's own (DEFAULT_VENV) is
    built (python -m venv + pip install -r) when missing or when the requirements file changed since."""
    if venv is not None:
        exe = venv / "bin" / "mlserver"
        if not exe.exists():
            raise SystemExit(f"{exe} not found: pass a venv with mlserver installed, or none to build the bench's own")
        return exe
    venv = DEFAULT_VENV
    exe = venv / "bin" / "mlserver"
    stamp = venv / ".requirements"
    wanted = REQUIREMENTS.read_text()
    if exe.exists() and stamp.exists() and stamp.read_text() == wanted:
        return exe
    print(f"building the MLServer venv in {venv} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                    "-r", str(REQUIREMENTS)], check=True)
    stamp.write_text(wanted)
    return exe


def write_model_folder(folder: Path, booster: Any, model: str, ports: tuple[int, int, int]) -> Path:
    """settings.json + model-settings.json + model.json for `mlserver start <folder>`."""
    folder.mkdir(parents=True, exist_ok=True)
    booster.save_model(folder / "model.json")
    http_port, grpc_port, metrics_port = ports
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "parallel_workers": 0, "debug": False}))
    (folder / "model-settings.json").write_text(json.dumps({
        "name": model, "implementation": "mlserver_xgboost.XGBoostModel",
        "parameters": {"uri": "./model.json", "version": "1"}}))
    return folder


def start(exe: Path, folder: Path, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the process
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SERVING_", "PYTHON"))}
    return subprocess.Popen([str(exe), "start", str(folder)], cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**env, "PATH": f"{exe.parent}:{env.get('PATH', '')}"})


def infer_bodies(matrix: Any) -> list[str]:
    """One OIP request per row (rows with a missing value are skipped: an FP32 tensor in JSON cannot hold NaN)."""
    bodies = []
    for row in matrix.tolist():
        if all(not (isinstance(v, float) and math.isnan(v)) for v in row):
            bodies.append(json.dumps({"inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP32",
                                                  "data": [float(v) for v in row]}]}))
    return bodies
