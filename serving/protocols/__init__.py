"""The wire protocols the app speaks; each module declares its routes (serving/routes.py) and only translates
its format in and out of the data plane (serving/dataplane.py). Adding a protocol is adding a module here."""

from __future__ import annotations

from serving.protocols import jobs, mlflow, oip, ops, v1
from serving.routes import Protocol

PROTOCOLS: list[Protocol] = [ops.api, v1.api, jobs.api, mlflow.api, oip.api]
