"""Online shadow: the challenger scores the live rows the payload log sampled, off every client's path.

Why re-score the payload log rather than mirror requests at the gateway (nginx `mirror`): the sample is already
taken, encoded and stored by serving/payload_log.py at no cost to the request, so the challenger only adds one
vectorised scorer call per pass over thousands of rows (microseconds a row) in the async worker. A mirror would
add a whole HTTP request per sampled request (nginx subrequest, a challenger replica's parse, encode, score and
answer: ~0.4 ms of CPU each, the cost of a live request) on the same 2 cores as the champion's clients, and
nginx holds the client's next request on a keep-alive connection until the mirror's subrequest ends. The price:
shadow answers land seconds later, and the challenger's own HTTP path is not exercised (its scores are what the
comparison needs).

Each pass (every WORKER_SHADOW_INTERVAL_S): the rows logged since the last pass (by the champion or a canary;
older than LAG_S, so the payload writers have flushed them), scored by the `challenger` alias's version, written
into ops.online_payloads beside them with route 'shadow' and the same logged_at, request id, entity and features
(the monitor pairs them: scoring/monitoring/shadow.py). The watermark is the newest shadow row, so a restarted
worker goes on where it stopped and never writes a row twice; one worker per model shadows at a time (an
advisory lock), however many run. The challenger is loaded without the gate's approval (it is, by definition,
a version the gate did not promote; it never answers a client), through the same safe booster loading.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import zlib

import psycopg

from scoring.rollout import SHADOW_ROUTE
from scoring.spec import ModelSpec
from serving.model_holder import ModelHolder
from serving.payload_log import COLUMNS

log = logging.getLogger("serving.shadow")

LAG_S = 5.0  # rows younger than this may still be in a payload writer's buffer
_START_BACK_S = 60.0  # the first pass ever looks this far back

_WATERMARK = ("SELECT max(logged_at) FROM ops.online_payloads WHERE model_name = %s AND route = %s "
              "AND log_date >= (now() AT TIME ZONE 'UTC')::date - 1")
_PENDING = ("SELECT logged_at, log_date, request_id, entity_id, features::text FROM ops.online_payloads "
            "WHERE model_name = %s AND route <> %s AND log_date >= %s AND logged_at > %s "
            "AND logged_at <= now() - make_interval(secs => %s) AND model_version IS DISTINCT FROM %s "
            "ORDER BY logged_at LIMIT %s")
_COPY = f"COPY ops.online_payloads ({', '.join(COLUMNS)}) FROM STDIN"


def _number(value: object) -> object:
    """The payload log writes an infinite float as the string "Infinity" (JSON has none); back to a float."""
    return float(value) if value in ("Infinity", "-Infinity") else value


class OnlineShadow:
    """One model's online shadow: a challenger holder and the pass loop (a daemon thread of the async worker)."""

    def __init__(self, spec: ModelSpec, url: str, holder: ModelHolder, *, interval_s: float,
                 max_rows: int = 20_000, lag_s: float = LAG_S) -> None:
        self.spec = spec
        self.url = url
        self.holder = holder  # ref=challenger, allow_ungated=True: shadow only
        self.interval_s = interval_s
        self.max_rows = max_rows
        self.lag_s = lag_s
        self.scored = 0  # rows written by this process (tests, logs)
        self.skipped = 0  # logged rows the challenger could not take
        self._since: dt.datetime | None = None  # the last row this process read (the database's watermark is
        # the last one written: a page of rows that could not be scored would be read again at every pass)
        self._lock_key = zlib.crc32(f"online-shadow:{spec.name}".encode())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None

    def start(self) -> OnlineShadow:
        if self.interval_s > 0 and self._thread is None:
            self.holder.start()
            self._thread = threading.Thread(target=self._run, name=f"online-shadow-{self.spec.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.holder.stop()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.step()
            except psycopg.Error as exc:  # the database went away: a new connection next pass
                log.warning("online shadow %s: pass failed (%s); retrying", self.spec.name, exc)
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
            except Exception:  # noqa: BLE001 - never let the thread die (and never touch the job loop)
                log.exception("online shadow %s: pass failed", self.spec.name)

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                         application_name=f"online-shadow-{self.spec.name}")
        return self._conn

    def step(self) -> int:
        """One pass; returns the rows the challenger scored (0: no challenger, another worker shadows, or
        nothing new)."""
        scorer = self.holder.current
        if scorer is None:
            return 0
        conn = self._connection()
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (self._lock_key,)).fetchone()[0]:
            return 0  # held by another worker's session (ours re-enters: it is a session lock)
        since = conn.execute(_WATERMARK, (self.spec.name, SHADOW_ROUTE)).fetchone()[0]
        if self._since is not None and (since is None or self._since > since):
            since = self._since  # past a page this process read but could not score a row of
        if since is None:
            since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=_START_BACK_S)
        version = int(scorer.version) if str(scorer.version).isdigit() else None
        rows = conn.execute(_PENDING, (self.spec.name, SHADOW_ROUTE, since.date(), since, self.lag_s, version,
                                       self.max_rows)).fetchall()
        if len(rows) == self.max_rows and rows[0][0] != rows[-1][0]:  # a full page: leave its last instant whole
            rows = [r for r in rows if r[0] != rows[-1][0]]
        if not rows:
            return 0
        last_read = rows[-1][0]
        names = self.spec.feature_names
        records = [{k: _number(v) for k, v in json.loads(r[4]).items() if k in names} for r in rows]
        # A row logged under another spec (a category since dropped, a new feature, ...) is skipped, counted and
        # named: one row the challenger cannot take must not stop the shadow.
        encoded = scorer.encode(records, reject=True)
        if encoded.rejects:
            self.skipped += encoded.n_rejected
            log.warning("online shadow %s: %d logged row(s) skipped, the challenger cannot take them (first: %s)",
                        self.spec.name, encoded.n_rejected, encoded.rejects[0])
            rows = [r for r, ok in zip(rows, encoded.valid.tolist(), strict=True) if ok]
            if not rows:
                self._since = last_read
                return 0
        preds = scorer.predict_matrix(encoded.matrix)
        scores = preds.scores.tolist()
        labels = preds.labels.tolist() if preds.labels is not None else None
        days = sorted({r[1] for r in rows})
        for day in days:
            conn.execute("SELECT ops.ensure_online_payload_partition(%s)", (day,))
        with conn.transaction(), conn.cursor() as cur, cur.copy(_COPY) as copy:
            for i, (at, day, request_id, entity_id, features) in enumerate(rows):
                copy.write_row((self.spec.name, day, at, version, SHADOW_ROUTE, request_id, entity_id, features,
                                scores[i], labels[i] if labels is not None else None))
        self._since = last_read
        self.scored += len(rows)
        log.info("online shadow %s: challenger %s scored %d logged live rows", self.spec.name, scorer.version,
                 len(rows))
        return len(rows)
