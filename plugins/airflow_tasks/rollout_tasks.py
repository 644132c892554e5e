"""The body of the `rollout_<model>` DAG's task: one registry move of a canary (scoring/rollout.py).

The DAG only moves the registry's state (alias `canary`, its share tag) and records it in ops.rollout_events;
the rollout watcher beside the gateway (stack/rollout.py) applies it to nginx within a tick. `scoring.rollout`
(MLflow, numpy) is imported inside the task so that DAG parsing stays light.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from airflow.sdk import Param

from airflow_tasks.hooks import serving_db_connection
from scoring.spec import ModelSpec

log = logging.getLogger(__name__)

ACTIONS = ("promote", "abort", "share", "start")


def rollout_params() -> dict[str, Param]:
    return {
        "action": Param("abort", enum=list(ACTIONS),
                        description="promote: the canary becomes champion; abort: its share to 0; share: move its "
                                    "share to `percent`; start: `version` becomes the canary at `percent`"),
        "version": Param(None, type=["null", "string"], description="start: the gate-approved version"),
        "percent": Param(10, type="number", minimum=0, maximum=100, description="start, share: the share (%)"),
        "reason": Param("aborted from Airflow", type="string", description="abort: why (recorded)"),
    }


def run(spec: ModelSpec, context: Mapping[str, Any]) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowFailException

    from scoring import rollout
    from scoring.registry import RegistryError

    params = context["params"]
    action = params["action"]
    try:
        with serving_db_connection() as conn:
            if action == "promote":
                version = rollout.promote(spec.name, conn)
                return {"action": action, "champion": version}
            if action == "abort":
                state = rollout.abort(spec.name, params["reason"], conn)
            elif action == "share":
                state = rollout.set_share(spec.name, float(params["percent"]), conn, reason="from Airflow")
            else:
                if not params.get("version"):
                    raise AirflowFailException("start needs `version`")
                state = rollout.start(spec.name, str(params["version"]), float(params["percent"]), conn)
    except (rollout.RolloutError, RegistryError) as exc:
        raise AirflowFailException(str(exc)) from exc  # a retry would not change the answer
    log.info("rollout %s: %s done; canary %s at %g%% (the gateway follows within STACK_ROLLOUT_CHECK_S)",
             spec.name, action, state.version, state.percent)
    return {"action": action, "canary": state.version, "percent": state.percent}
