-- Async jobs: an owner per job, idempotency keys per owner, a TTL for queued jobs, and a size per payload.
--  * owner: the client (token name, serving.auth.current_client) that submitted the job; other clients get 404,
--    and the same Idempotency-Key from two clients makes two jobs. Jobs from before this migration are
--    'anonymous' (what an open deployment's caller is).
--  * expires_at: a queued job not claimed by then ends 'expired' with the reason (never scored).
--  * payload_bytes: the payload's size as accepted, so a claim can stop adding jobs past a byte cap.
ALTER TABLE ops.prediction_jobs
    ADD COLUMN owner         text    NOT NULL DEFAULT 'anonymous',
    ADD COLUMN expires_at    timestamptz,
    ADD COLUMN payload_bytes integer;

ALTER TABLE ops.prediction_jobs DROP CONSTRAINT prediction_jobs_idempotency;
ALTER TABLE ops.prediction_jobs
    ADD CONSTRAINT prediction_jobs_idempotency UNIQUE (model_name, owner, idempotency_key);

ALTER TABLE ops.prediction_jobs DROP CONSTRAINT prediction_jobs_status_check;
ALTER TABLE ops.prediction_jobs ADD CONSTRAINT prediction_jobs_status_check
    CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled', 'expired'));

-- Retention covers expired jobs too; expiry looks up queued jobs by deadline.
DROP INDEX ops.prediction_jobs_finished;
CREATE INDEX prediction_jobs_finished ON ops.prediction_jobs (finished_at)
    WHERE status IN ('done', 'failed', 'cancelled', 'expired');
CREATE INDEX prediction_jobs_expiry ON ops.prediction_jobs (expires_at) WHERE status = 'queued';
