-- Monitoring (issue 14): one row per (model, day, check) written by the monitor_<model> DAG after each nightly
-- run. `value` is what was measured, `threshold` the limit that decided `status` (the alert limit once crossed,
-- else the warn limit; NULL for figures without limits, status 'info'). A re-run of a day replaces its rows.
-- Realised metrics (check 'realised_<metric>') are filed under the day that was predicted, once labels arrived.
CREATE TABLE ops.monitoring_checks (
    model_name      text             NOT NULL,
    monitor_date    date             NOT NULL,
    check_name      text             NOT NULL,
    value           double precision,
    threshold       double precision,
    alert_threshold double precision,
    status          text             NOT NULL CHECK (status IN ('ok', 'warn', 'alert', 'info')),
    detail          text             NOT NULL DEFAULT '',
    model_version   integer,
    run_id          text             NOT NULL,
    computed_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, monitor_date, check_name)
);
-- "What alerted lately?"
CREATE INDEX monitoring_checks_status ON ops.monitoring_checks (model_name, status, monitor_date DESC)
    WHERE status IN ('warn', 'alert');
