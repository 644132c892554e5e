"""The per-process serving state an app holds: spec, settings, model holder, prediction store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app

from scoring.spec import ModelSpec
from serving.config import Settings
from serving.model_holder import ModelHolder

if TYPE_CHECKING:
    from serving.lookup import PredictionStore

EXTENSION_KEY = "serving"


@dataclass
class ServingState:
    spec: ModelSpec
    settings: Settings
    holder: ModelHolder
    store: PredictionStore | None = None

    def __post_init__(self) -> None:
        from serving.metrics import ROWS

        self.rows_live = ROWS.labels(self.spec.name, "live")  # hot-path counters, labels resolved once
        self.rows_precomputed = ROWS.labels(self.spec.name, "precomputed")

    def db_ok(self) -> bool:
        return self.store is not None and self.store.ping()


def state() -> ServingState:
    return current_app.extensions[EXTENSION_KEY]
