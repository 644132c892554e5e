"""The promotion gate: one judge for every registered version, trained by `train_<model>` or logged from anywhere.

    python -m scoring.gate --model churn --version 7 [--end-date 2026-11-02]

`evaluate_version` is what the training DAG's gate task, the `evaluate_<model>` DAG and this command call:
  1. the version's artefact is checked against the model's spec (`spec_problems`): a booster format and class the
     loader accepts, a signature whose inputs are the spec's features (names, order, types, categories as codes),
     the spec's task (classifier or regressor). A version that does not fit is refused naming every mismatch.
  2. then judged by `scoring.training.run_gate` on the held-out part of the window ending at `end` (the same rows,
     baseline and champion comparison, and for online models the same latency budget, whoever trained it), which
     tags the version (gate.decision, gate.reason, figures) and moves `champion` (or `challenger`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import xgboost as xgb

from scoring.registry import artifact_problems, downloaded, read_mlmodel
from scoring.spec import Feature, ModelSpec
from scoring.training import (
    GateDecision,
    TrainingData,
    Window,
    baseline_metric,
    load_holdout,
    run_gate,
    tag_version,
    train_label_mean,
)

log = logging.getLogger(__name__)

# MLflow column types a signature may give each kind of spec feature: the model is fed the encoder's float matrix,
# so any numeric column type holds an integer or a category code; a float feature needs a floating type.
_ACCEPTED_TYPES = {"int": {"long", "integer", "double", "float"}, "float": {"double", "float"},
                   "category": {"long", "integer", "double", "float"}}
_SPEC_SAYS = {"int": "integer (long or double)", "float": "number (double)", "category": "category code (int)"}
_CLASSIFIER_OBJECTIVES = frozenset({"binary:logistic"})  # the scorer reads the output as P(class 1)
_TASK_CLASSES = {"classification": "xgboost.sklearn.XGBClassifier", "regression": "xgboost.sklearn.XGBRegressor"}


def _feature_type_problem(feature: Feature, column_type: str | None) -> str | None:
    if column_type in _ACCEPTED_TYPES[feature.type]:
        return None
    return f"input '{feature.name}': signature says {column_type}, spec says {_SPEC_SAYS[feature.type]}"


def signature_problems(spec: ModelSpec, mlmodel: dict[str, Any] | None) -> list[str]:
    """Every way the logged signature's inputs differ from the spec's features (empty when they are equal)."""
    signature = (mlmodel or {}).get("signature") or {}
    try:
        inputs = json.loads(signature.get("inputs") or "null")
    except (TypeError, ValueError):
        inputs = None
    if not isinstance(inputs, list) or not inputs:
        return ["no signature inputs: log the version with signature=model_signature(...) (scoring.model_matrix)"]
    if not all(isinstance(i, dict) and isinstance(i.get("name"), str) and i.get("type") != "tensor" for i in inputs):
        return ["the signature's inputs are not named columns (a tensor signature?): expected one column per "
                f"feature, {spec.feature_names}"]
    types = {i["name"]: i.get("type") for i in inputs}
    names = [i["name"] for i in inputs]
    wanted = {f.name: f for f in spec.features}
    problems = [f"missing input '{f.name}'" for f in spec.features if f.name not in types]
    problems += [f"unexpected input '{n}' (not a feature of the spec)" for n in names if n not in wanted]
    shared = [n for n in names if n in wanted]
    if shared != [n for n in spec.feature_names if n in types]:
        problems.append(f"inputs are in the order {shared}, the spec's order is {spec.feature_names}")
    problems += [p for n in shared if (p := _feature_type_problem(wanted[n], types[n])) is not None]
    return problems


def booster_problems(spec: ModelSpec, booster: xgb.Booster, model_class: str | None) -> list[str]:
    """Where the booster itself disagrees with the spec: its number and names of features, and its task."""
    problems = []
    if booster.num_features() != len(spec.features):
        problems.append(f"the booster takes {booster.num_features()} features, the spec lists {len(spec.features)}")
    if booster.feature_names is not None and list(booster.feature_names) != spec.feature_names:
        problems.append(f"the booster was trained on features {list(booster.feature_names)}, the spec lists "
                        f"{spec.feature_names}")
    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    if spec.is_classifier and objective not in _CLASSIFIER_OBJECTIVES:
        problems.append(f"task: the spec's model is a classifier (objective binary:logistic), the booster's "
                        f"objective is {objective}")
    if not spec.is_classifier and (not objective.startswith("reg:") or objective == "reg:logistic"):
        problems.append(f"task: the spec's model is a regressor (objective reg:*), the booster's objective is "
                        f"{objective}")
    other_task = {v: k for k, v in _TASK_CLASSES.items()}.get(model_class or "")
    if other_task is not None and other_task != spec.task:
        problems.append(f"task: the spec says {spec.task}, the logged model is a {model_class}")
    return problems


def spec_problems(spec: ModelSpec, local: Path) -> list[str]:
    """Every reason the downloaded model directory `local` cannot serve as a version of `spec` (empty: it fits)."""
    problems, booster_file = artifact_problems(local)
    mlmodel = read_mlmodel(local)
    problems += signature_problems(spec, mlmodel)
    if booster_file is not None:
        try:
            booster = xgb.Booster(model_file=str(booster_file))
        except xgb.core.XGBoostError as exc:
            problems.append(f"XGBoost cannot read {booster_file.name}: {exc}")
        else:
            model_class = ((mlmodel or {}).get("flavors") or {}).get("xgboost", {}).get("model_class")
            problems += booster_problems(spec, booster, model_class)
    return problems


def refuse_unfit(spec: ModelSpec, version: str, problems: list[str]) -> GateDecision:
    """Record the refusal of a version that does not fit the spec (tags as any gate decision, never an alias)."""
    decision = GateDecision(False, f"does not fit the spec of model '{spec.name}': " + "; ".join(problems))
    tag_version(spec, version, {**decision.tags(), "gate.fit": "mismatch"})
    log.warning("gate for model %s version %s: REFUSED - %s", spec.name, version, decision.reason)
    return decision


def evaluate_version(spec: ModelSpec, version: str, conn: psycopg.Connection, end: dt.date,
                     data: TrainingData | None = None) -> GateDecision:
    """The gate for registered `version`: its fit to the spec, then run_gate on the held-out window ending at
    `end` (exclusive), against the champion; `data` when the caller (training) already holds that window."""
    version = str(version)
    with downloaded(spec.name, version) as local:
        problems = spec_problems(spec, local)
    if problems:
        return refuse_unfit(spec, version, problems)
    data = data if data is not None else load_holdout(conn, spec, end)
    mean = train_label_mean(conn, spec, Window.ending(spec, end)) if spec.metric != "roc_auc" else 0.0
    baseline = baseline_metric(spec, pd.DataFrame({spec.label: [mean]}), data.holdout)
    return run_gate(spec, version, data, baseline)


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when promoted, 1 when refused (the reason on stderr), 2 when it cannot be judged."""
    from scoring.db import connect
    from scoring.registry import RegistryError
    from scoring.settings import SettingsError
    from scoring.spec import SpecError, load_spec
    from scoring.training import TrainingError

    parser = argparse.ArgumentParser(prog="python -m scoring.gate",
                                     description="Judge a registered version with the promotion gate.")
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", required=True, help="registered version number")
    parser.add_argument("--end-date", type=dt.date.fromisoformat, default=None,
                        help="the window ends the day before (YYYY-MM-DD; default today, UTC)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not args.version.isdigit():
        print(f"error: --version expects a version number such as 7, got {args.version!r}", file=sys.stderr)
        return 2
    end = args.end_date or dt.datetime.now(dt.UTC).date()
    try:
        spec = load_spec(args.model)
        with connect() as conn:
            decision = evaluate_version(spec, args.version, conn, end)
    except (SpecError, SettingsError, RegistryError, TrainingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"model": spec.name, "version": args.version, "decision": decision.tags()["gate.decision"],
                      "reason": decision.reason, "challenger": decision.challenger, "figures": decision.figures}))
    if decision.promoted:
        print(f"model '{spec.name}' version {args.version} is the champion: serving reloads it; the nightly table "
              f"is re-scored by predict_{spec.name}'s next run (evaluate_{spec.name} re-scores at once)",
              file=sys.stderr)
    return 0 if decision.promoted else 1


if __name__ == "__main__":
    sys.exit(main())
