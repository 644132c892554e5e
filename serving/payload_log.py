"""Online payload logging: a sample of the live requests and what they were answered, for the monitor.

The request path only decides (one random draw) and appends a reference to the already-encoded matrix and its
predictions to a bounded in-memory buffer: no copy, no encoding, no I/O, no waiting. A background thread per
worker turns what it holds into rows (categories by name, missing values as null) and writes them with one COPY
into `ops.online_payloads` (sql/008), on its own connection, never one of the request pool's.

Bounded, never blocking: a sampled request whose rows do not fit in the buffer is dropped and counted
(`serving_payload_rows_total{outcome="dropped_buffer_full"}`). A write that fails (database down, lock held past
the statement timeout) keeps its rows in the buffer and is retried after a pause, so that a short outage loses
nothing while the buffer has room; rows that no longer fit are dropped and counted (`dropped_write_failed`).
At exit the writer flushes what it holds (bounded by `close(timeout_s)`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg

from scoring.scorer import Predictions
from scoring.spec import ModelSpec
from serving.metrics import PAYLOAD_ROWS
from serving.values import is_bigint

log = logging.getLogger(__name__)

COLUMNS = ("model_name", "log_date", "logged_at", "model_version", "route", "request_id", "entity_id", "features",
           "score", "label")
_COPY = f"COPY ops.online_payloads ({', '.join(COLUMNS)}) FROM STDIN"
WARN_EVERY_S = 30.0
_INF = float("inf")


@dataclass(frozen=True)
class Sampled:
    """One sampled request: references to what the request already built (nothing is copied on its path)."""

    logged_at: float  # time.time()
    version: str | None
    route: str
    request_id: str | None
    matrix: np.ndarray  # the encoded rows, spec feature order
    predictions: Predictions
    entity_ids: list[Any] | None

    def __len__(self) -> int:
        return len(self.predictions)


class PayloadLog:
    """Sample, buffer and write one model's live payloads (one instance per serving worker)."""

    def __init__(self, spec: ModelSpec, url: str, *, rate: float, capacity_rows: int, flush_s: float = 1.0,
                 retry_s: float = 1.0, statement_timeout_ms: int = 5000) -> None:
        if not 0 <= rate <= 1:
            raise ValueError(f"payload sample rate {rate} is not between 0 and 1")
        self.spec = spec
        self.url = url
        self.rate = rate
        self.capacity = capacity_rows
        self.flush_s = flush_s
        self.retry_s = retry_s
        self.statement_timeout_ms = statement_timeout_ms
        self._lock = threading.Lock()
        self._pending: list[Sampled] = []
        self._rows = 0  # rows in _pending (and in a write in progress, until it lands)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None
        self._partitions: set[dt.date] = set()  # days whose partition is known to exist
        self._decoders = [f.categories if f.type == "category" else f.type for f in spec.features]
        self._logged = PAYLOAD_ROWS.labels(spec.name, "logged")
        self._dropped_full = PAYLOAD_ROWS.labels(spec.name, "dropped_buffer_full")
        self._dropped_failed = PAYLOAD_ROWS.labels(spec.name, "dropped_write_failed")
        self.logged = self.dropped = 0  # this process's counts (tests, the bench)
        self._warned_at = -1e9  # a failing database is reported at most every WARN_EVERY_S, not every retry

    # ------------------------------------------------------------ the request path

    def sampled(self) -> bool:
        """Whether this request is logged (one draw; False at once when logging is off)."""
        rate = self.rate
        return rate >= 1 or (rate > 0 and random.random() < rate)

    def offer(self, item: Sampled) -> bool:
        """Buffer a sampled request, or drop it (counted) when its rows do not fit. Never waits for the writer."""
        n = len(item)
        wake = False
        with self._lock:
            if self._rows + n > self.capacity:
                fits = False
            else:
                self._pending.append(item)
                self._rows += n
                fits = True
                wake = self._rows * 4 >= self.capacity
        if not fits:
            self.dropped += n
            self._dropped_full.inc(n)
            return False
        if wake:
            self._wake.set()
        return True

    # ------------------------------------------------------------ the writer

    def start(self) -> PayloadLog:
        if self.rate > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"payload-log-{self.spec.name}", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop the writer after one last flush (bounded by timeout_s)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():  # still writing: its connection is in use (a daemon: it ends with us)
                return
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def buffered_rows(self) -> int:
        return self._rows

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_s)
            self._wake.clear()
            if not self.flush() and not self._stop.is_set():
                self._stop.wait(self.retry_s)  # the database refused: pause before the next try
        self.flush()

    def flush(self) -> bool:
        """Write everything buffered now; False when the write failed (the rows are kept while they fit)."""
        with self._lock:
            batch, self._pending = self._pending, []
        if not batch:
            return True
        n = sum(len(item) for item in batch)
        try:
            self._write(batch)
        except psycopg.Error as exc:  # the database: keep the rows for the next try
            self._close_conn()
            self._requeue(batch, n, exc, keep=True)
            return False
        except Exception as exc:  # noqa: BLE001 - anything else would fail again: drop, never raise into a worker
            self._close_conn()
            self._requeue(batch, n, exc, keep=False)
            return False
        with self._lock:
            self._rows -= n
        self.logged += n
        self._logged.inc(n)
        return True

    def _requeue(self, batch: list[Sampled], n: int, exc: Exception, *, keep: bool) -> None:
        """Put a failed batch back in front of what arrived meanwhile (keep=True), dropping (counted) what no
        longer fits; keep=False drops it all."""
        with self._lock:
            newer = sum(len(item) for item in self._pending)
            kept: list[Sampled] = []
            room = self.capacity - newer if keep else 0
            for item in batch:
                if len(item) <= room:
                    kept.append(item)
                    room -= len(item)
            lost = n - sum(len(item) for item in kept)
            self._pending = kept + self._pending
            self._rows -= lost
        if lost:
            self.dropped += lost
            self._dropped_failed.inc(lost)
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY_S and not lost:
            return
        self._warned_at = now
        log.warning("payload log %s: writing %d rows failed (%s); %d kept for the next try, %d dropped",
                    self.spec.name, n, str(exc).strip() or type(exc).__name__, n - lost, lost)

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                         options=f"-c statement_timeout={self.statement_timeout_ms}",
                                         application_name=f"payload-log-{self.spec.name}")
        return self._conn

    def _close_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def _write(self, batch: list[Sampled]) -> None:
        conn = self._connection()
        days = {_utc_day(item.logged_at) for item in batch} - self._partitions
        for day in sorted(days):
            conn.execute("SELECT ops.ensure_online_payload_partition(%s)", (day,))
            self._partitions.add(day)
        with conn.transaction(), conn.cursor() as cur, cur.copy(_COPY) as copy:
            for row in self.rows(batch):
                copy.write_row(row)

    # ------------------------------------------------------------ rows

    def rows(self, batch: Iterable[Sampled]) -> Iterator[tuple]:
        """The table's rows of sampled requests, in COLUMNS order."""
        names = self.spec.feature_names
        model = self.spec.name
        for item in batch:
            at = dt.datetime.fromtimestamp(item.logged_at, dt.UTC)
            version = int(item.version) if item.version and item.version.isdigit() else None
            scores = item.predictions.scores.tolist()
            labels = item.predictions.labels.tolist() if item.predictions.labels is not None else None
            ids = item.entity_ids
            for i, values in enumerate(np.asarray(item.matrix, dtype=np.float64).tolist()):
                doc = json.dumps(dict(zip(names, map(_decode, self._decoders, values), strict=True)),
                                 allow_nan=False)
                yield (model, at.date(), at, version, item.route, item.request_id,
                       ids[i] if ids is not None and is_bigint(ids[i]) else None, doc, scores[i],
                       labels[i] if labels is not None else None)


def _decode(decoder: Any, value: float) -> Any:
    """A matrix value back as the client would have sent it: a category's name, an int, a float or None."""
    if value != value:  # NaN: missing
        return None
    if value in (_INF, -_INF):  # beyond float32 at the door; JSON has no infinity, PostgreSQL's float8 reads this
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(decoder, tuple):
        return decoder[int(value)]
    if decoder == "int" and value.is_integer():
        return int(value)
    return value



def _utc_day(ts: float) -> dt.date:
    return dt.datetime.fromtimestamp(ts, dt.UTC).date()
