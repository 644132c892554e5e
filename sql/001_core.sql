-- Core schemas: features (inputs), predictions (batch results), ops (runs, rejects, queue).
CREATE SCHEMA IF NOT EXISTS features;
CREATE SCHEMA IF NOT EXISTS predictions;
CREATE SCHEMA IF NOT EXISTS ops;

-- Demo feature snapshots: one row per customer per day, partitioned by day so a day is written,
-- scanned and retired as a unit. Labels are known for history (the demo generator plants them).
CREATE TABLE features.customer_daily (
    snapshot_date         date        NOT NULL,
    customer_id           bigint      NOT NULL,
    tenure_months         integer,
    plan                  text,
    contract              text,
    region                text,
    payment_method        text,
    monthly_charges       double precision,
    data_usage_gb         double precision,
    avg_session_minutes   double precision,
    support_calls_30d     integer,
    late_payments_12m     integer,
    num_products          integer,
    days_since_last_login integer,
    churned               smallint,
    next_month_spend      double precision,
    PRIMARY KEY (snapshot_date, customer_id)
) PARTITION BY LIST (snapshot_date);

-- Every batch scoring run of a (model, date): the latest successful one names the date lookups serve.
CREATE TABLE ops.batch_runs (
    id              bigserial PRIMARY KEY,
    model_name      text        NOT NULL,
    model_version   integer,
    prediction_date date        NOT NULL,
    run_id          text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('running', 'success', 'failed')),
    rows_scored     bigint      NOT NULL DEFAULT 0,
    rows_rejected   bigint      NOT NULL DEFAULT 0,
    duration_s      double precision,
    error           text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
CREATE INDEX batch_runs_latest ON ops.batch_runs (model_name, status, prediction_date DESC);

-- Feature rows a batch run could not score, with the reason (nothing is silently dropped).
CREATE TABLE ops.prediction_rejects (
    id              bigserial PRIMARY KEY,
    model_name      text        NOT NULL,
    prediction_date date        NOT NULL,
    run_id          text        NOT NULL,
    entity_id       text        NOT NULL,
    column_name     text,
    reason          text        NOT NULL,
    row_data        jsonb,
    rejected_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX prediction_rejects_model_date ON ops.prediction_rejects (model_name, prediction_date);
