"""Hot-reloadable holder of the serving model version (one per process: gunicorn worker or async worker).

A daemon thread polls the registry alias. When it moves, the new version is loaded beside the old one,
smoke-scored on a synthetic valid row, and only then swapped in by rebinding one attribute: readers take
`holder.current` once per request and never lock, so a swap cannot fail a request in flight.
Only versions the promotion gate approved are loaded (their `gate.decision` tag is `promoted`), unless
`allow_ungated` (SERVING_ALLOW_UNGATED) says otherwise: whoever can move an alias cannot bypass the gate.
A version that is not approved, or fails to load or to score, is refused (counted, logged, remembered so it is
not retried every poll) and the old one keeps serving. An unreachable MLflow keeps the loaded version too.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scoring.registry import (
    CHAMPION,
    NotApprovedError,
    RegistryError,
    RegistryUnavailableError,
    load_booster,
    resolve_approved,
    version_tags,
)
from scoring.scorer import Scorer, read_explain_verdict
from scoring.spec import ModelSpec

log = logging.getLogger(__name__)


def smoke_row(spec: ModelSpec) -> dict[str, Any]:
    """A valid record for any spec: zeros for numbers, the first category for categories."""
    row: dict[str, Any] = {}
    for f in spec.features:
        row[f.name] = f.categories[0] if f.type == "category" else (0 if f.type == "int" else 0.0)
    return row


@dataclass
class HolderStats:
    reloads: int = 0  # successful swaps after the first load
    refused: int = 0  # versions that failed to load or to smoke-score
    checks: int = 0
    last_error: str | None = None
    last_check_at: float | None = None
    refused_versions: dict[str, str] = field(default_factory=dict)  # version -> reason


class ModelHolder:
    def __init__(self, spec: ModelSpec, ref: str = CHAMPION, poll_interval_s: float = 10.0,
                 threads: int | None = None,
                 on_swap: Callable[[Scorer | None, Scorer], None] | None = None,
                 on_refuse: Callable[[str, str], None] | None = None, allow_ungated: bool = False) -> None:
        self.spec = spec
        self.allow_ungated = allow_ungated  # serve versions the gate did not promote (documented override)
        self.ref = ref
        self.poll_interval_s = poll_interval_s
        self.threads = threads
        self.on_swap = on_swap  # e.g. metrics: called after every swap with (old, new)
        self.on_refuse = on_refuse  # called with (version, reason) when a version is refused
        self.stats = HolderStats()
        self._current: Scorer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # serialises check_now() calls, never taken by readers
        self._unapproved: set[str] = set()  # versions refused only because the gate had not promoted them

    @property
    def current(self) -> Scorer | None:
        return self._current

    @property
    def version(self) -> str | None:
        cur = self._current
        return cur.version if cur is not None else None

    def start(self) -> ModelHolder:
        """Load the current version if possible (never raises for a missing alias or MLflow), then poll."""
        self.check_now()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"model-holder-{self.spec.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.check_now()
            except Exception:  # never let the poller die
                log.exception("model holder poll failed")

    def _note_error(self, message: str) -> None:
        self.stats.last_error = message

    def check_now(self) -> bool:
        """One poll: resolve the alias and swap if it moved. True when a new version was swapped in."""
        with self._lock:
            self.stats.checks += 1
            self.stats.last_check_at = time.time()
            try:  # the one resolve-and-approve rule (scoring.registry), as the predict DAG and batch CLI use
                version = resolve_approved(self.spec.name, self.ref, allow_ungated=self.allow_ungated).version
            except NotApprovedError as exc:
                self._unapproved.add(str(exc.version))  # refused until the gate promotes it (then loaded)
                return self._refuse(exc.version, f"version {exc.version} refused: NotApprovedError: {exc}")
            except RegistryError as exc:
                if self._current is None:
                    log.info("model %s: no version to serve yet: %s", self.spec.name, exc)
                else:
                    log.warning("model %s: keeping version %s: %s", self.spec.name, self._current.version, exc)
                self._note_error(str(exc))
                return False
            if self._current is not None and self._current.version == version:
                return False
            if version in self._unapproved:  # refused as not approved, now promoted by the gate: try it
                self._unapproved.discard(version)
                self.stats.refused_versions.pop(version, None)
            if version in self.stats.refused_versions:
                return False
            try:
                candidate = self._load(version)
            except Exception as exc:  # any failure to load or smoke-score refuses the version
                reason = f"version {version} refused: {type(exc).__name__}: {exc}"
                if isinstance(exc, RegistryUnavailableError):
                    # MLflow went away between resolve and load: not the version's fault, try again next poll
                    self._note_error(reason)
                    return False
                return self._refuse(version, reason)
            self._swap(candidate)
            return True

    def _refuse(self, version: str | None, reason: str) -> bool:
        """Refuse `version` once (counted, logged, remembered so later polls skip it); the old one serves on."""
        version = str(version)
        if version in self.stats.refused_versions or (self._current is not None and self._current.version == version):
            return False
        self.stats.refused += 1
        self.stats.refused_versions[version] = reason
        self._note_error(reason)
        log.error("model %s: %s; still serving %s", self.spec.name, reason, self.version)
        self._callback(self.on_refuse, version, reason)
        return False

    def install(self, scorer: Scorer) -> None:
        """Serve `scorer` now (a version built elsewhere, e.g. in a test), through the same swap as a reload."""
        with self._lock:
            self._swap(scorer)

    def _swap(self, candidate: Scorer) -> None:
        old = self._current
        self._current = candidate  # the atomic swap: one reference rebind
        if old is not None:
            self.stats.reloads += 1
        log.info("model %s: now serving version %s (was %s)", self.spec.name, candidate.version,
                 old.version if old else None)
        self._callback(self.on_swap, old, candidate)

    @staticmethod
    def _callback(fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:  # a metrics hook must never break reloading
            log.exception("model holder callback failed")

    def _load(self, version: str) -> Scorer:
        booster = load_booster(self.spec.name, version)
        scorer = Scorer.from_booster(self.spec, booster, version, threads=self.threads)
        read_explain_verdict(scorer, version_tags(self.spec.name, version))  # may it explain online?
        out = scorer.score([smoke_row(self.spec)])
        value = float(out.scores[0])
        if len(out) != 1 or not math.isfinite(value):
            raise ValueError(f"smoke row scored {value!r}, expected one finite value")
        return scorer
