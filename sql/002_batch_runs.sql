-- Batch scoring bookkeeping (issue 4): a run is prepared once, scored by N shards, then swapped in.
-- Each shard records its result in the same transaction that loads its rows into the run's staging table,
-- so a retried shard sees it is done (no duplicates) and the final swap knows every shard finished.
ALTER TABLE ops.batch_runs
    ADD COLUMN IF NOT EXISTS shards        integer,
    ADD COLUMN IF NOT EXISTS staging_table text;

CREATE TABLE ops.batch_shards (
    batch_run_id  bigint           NOT NULL REFERENCES ops.batch_runs (id) ON DELETE CASCADE,
    shard         integer          NOT NULL,
    rows_scored   bigint           NOT NULL,
    rows_rejected bigint           NOT NULL,
    duration_s    double precision NOT NULL,
    finished_at   timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_run_id, shard)
);

CREATE INDEX prediction_rejects_run ON ops.prediction_rejects (run_id);
