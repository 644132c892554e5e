"""A model of its own for a test: an existing models.yaml entry under another name, with its own prediction table
(created), so the test's registry entries, aliases and predictions leave the session's models alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import yaml

REPO = Path(__file__).resolve().parent.parent


def write_model_copy(name: str, directory: Path, db_url: str, source: str = "churn", **overrides: Any) -> Path:
    """models.yaml holding only `source`'s entry named `name` (keys replaced by `overrides`); point MODELS_FILE at
    the returned path. The prediction table predictions.<name> exists afterwards."""
    from scoring.spec import load_spec
    from scoring.store import ensure_prediction_table

    document = yaml.safe_load((REPO / "models.yaml").read_text())
    document["models"] = {name: {**document["models"][source], "prediction_table": f"predictions.{name}",
                                 **overrides}}
    path = directory / "models.yaml"
    path.write_text(yaml.safe_dump(document))
    with psycopg.connect(db_url) as conn:
        ensure_prediction_table(conn, load_spec(name, path))
        conn.commit()
    return path


def register_copy(model: str, version: str, approved: bool = True) -> str:
    """`version`'s artifact registered again as a new version of `model` (the same booster under another number:
    a canary or challenger that a version number tells apart); tagged approved like the original when
    `approved`."""
    from mlflow import MlflowClient

    mc = MlflowClient()
    source = mc.get_model_version(model, version)
    # MLflow 3: a version's source is its logged model (models:/m-<id>), which must be named again
    model_id = source.model_id or source.source.removeprefix("models:/")
    new = str(mc.create_model_version(model, source.source, run_id=source.run_id, model_id=model_id).version)
    if approved:
        mc.set_model_version_tag(model, new, "gate.decision", "promoted")
        mc.set_model_version_tag(model, new, "gate.copy_of", str(version))
    return new
