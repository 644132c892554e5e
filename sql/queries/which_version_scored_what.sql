-- Lineage: for each model and day, which registered version and which Airflow run produced the stored rows,
-- next to that run's bookkeeping (rows scored/rejected, duration) from ops.batch_runs.
SELECT p.prediction_date,
       p.model_name,
       p.model_version,
       p.run_id,
       count(*)          AS rows_stored,
       r.rows_scored,
       r.rows_rejected,
       round(r.duration_s::numeric, 2) AS duration_s,
       r.finished_at
FROM (SELECT prediction_date, model_name, model_version, run_id FROM predictions.churn
      UNION ALL
      SELECT prediction_date, model_name, model_version, run_id FROM predictions.spend) p
LEFT JOIN ops.batch_runs r ON r.run_id = p.run_id AND r.model_name = p.model_name
                          AND r.prediction_date = p.prediction_date AND r.status = 'success'
GROUP BY p.prediction_date, p.model_name, p.model_version, p.run_id, r.rows_scored, r.rows_rejected,
         r.duration_s, r.finished_at
ORDER BY p.prediction_date DESC, p.model_name;
