-- ops.prediction_jobs.callback_url (from 003) was never set by any route nor read by anything: no callback is
-- ever made. Dropped with the job fields that carried it (issue 23).
ALTER TABLE ops.prediction_jobs DROP COLUMN IF EXISTS callback_url;
