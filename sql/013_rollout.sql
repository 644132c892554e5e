-- Safe rollout (issue 24): every move of a canary's share, and why, one row each (stack/rollout.py and the
-- rollout_<model> DAG write them through scoring/rollout.py). The registry holds the current state (alias
-- `canary`, tag `rollout.canary_percent`); this table is its history, and the reason of every rollback:
--
--     SELECT at, action, version, percent, reason FROM ops.rollout_events
--     WHERE model_name = 'churn' ORDER BY at DESC LIMIT 10;
--
-- action: start (a canary takes a share), share (the share moved), promote (the canary became champion),
-- abort (moved to 0 by hand), rollback (moved to 0 by the automatic check; `evidence` holds its figures).
CREATE TABLE ops.rollout_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_name    text        NOT NULL,
    at            timestamptz NOT NULL DEFAULT now(),
    action        text        NOT NULL CHECK (action IN ('start', 'share', 'promote', 'abort', 'rollback')),
    version       integer,
    percent       double precision NOT NULL CHECK (percent >= 0 AND percent <= 100),
    reason        text        NOT NULL DEFAULT '',
    evidence      jsonb,
    actor         text        NOT NULL DEFAULT current_user
);
CREATE INDEX rollout_events_model ON ops.rollout_events (model_name, at DESC);

-- The monitor and the rollback check read it, the Airflow tasks (promote/abort by DAG run) write it.
GRANT SELECT, INSERT ON ops.rollout_events TO platform_batch;

-- Online shadow: the async worker re-scores the payload log's rows with the challenger and writes its answers
-- beside the champion's (route 'shadow'), so it reads the log and writes to it.
GRANT SELECT, INSERT ON ops.online_payloads TO platform_worker;
GRANT EXECUTE ON FUNCTION ops.ensure_online_payload_partition(date) TO platform_worker;
-- Finding a request's champion row again (the shadow's pair) and the shadow's watermark.
CREATE INDEX online_payloads_route ON ops.online_payloads (model_name, route, logged_at);
