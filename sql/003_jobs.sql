-- The async prediction queue: one row per submitted job, claimed by workers with FOR UPDATE SKIP LOCKED.
-- A job is queued -> running (leased to one worker) -> done | failed; a queued job may be cancelled.
-- A running job whose lease expired (its worker died) goes back to queued, or to failed when out of attempts.
CREATE TABLE ops.prediction_jobs (
    id               uuid        PRIMARY KEY,
    model_name       text        NOT NULL,
    payload          jsonb       NOT NULL,            -- the records as accepted at the door (a JSON array)
    n_records        integer     NOT NULL CHECK (n_records > 0),
    status           text        NOT NULL DEFAULT 'queued'
                                 CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    attempts         integer     NOT NULL DEFAULT 0,  -- claims so far; (worker_id, attempts) fences result writes
    max_attempts     integer     NOT NULL DEFAULT 3 CHECK (max_attempts > 0),
    result           jsonb,                           -- one prediction object per record, in record order
    model_version    integer,                         -- the registered version that produced the result
    error            text,                            -- last failure reason (kept when a retry later succeeds)
    result_writes    integer     NOT NULL DEFAULT 0,  -- audit: times a result was written (must end at 1)
    idempotency_key  text,
    callback_url     text,
    worker_id        text,
    lease_expires_at timestamptz,
    run_after        timestamptz NOT NULL DEFAULT now(),  -- retry backoff: not claimable before this
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    CONSTRAINT prediction_jobs_idempotency UNIQUE (model_name, idempotency_key),
    CONSTRAINT prediction_jobs_lease CHECK (status <> 'running' OR (worker_id IS NOT NULL AND lease_expires_at IS NOT NULL))
);

-- The claim query: oldest claimable queued jobs of a model (partial, so it stays small as jobs finish).
CREATE INDEX prediction_jobs_claim ON ops.prediction_jobs (model_name, run_after) WHERE status = 'queued';
-- Reclaiming expired leases.
CREATE INDEX prediction_jobs_leases ON ops.prediction_jobs (lease_expires_at) WHERE status = 'running';
-- Retention: finished jobs by age.
CREATE INDEX prediction_jobs_finished ON ops.prediction_jobs (finished_at)
    WHERE status IN ('done', 'failed', 'cancelled');
