-- Which feature drives most predictions today? Per feature: how many customers have it as their strongest reason
-- (rank 1), how often it raises rather than lowers the score, and its mean |contribution| where it is among the
-- stored top reasons (predictions.churn_reasons of the latest published day).
WITH latest AS (
    SELECT max(prediction_date) AS day
    FROM ops.batch_runs
    WHERE model_name = 'churn' AND status = 'success'
)
SELECT r.feature,
       count(*) FILTER (WHERE r.rank = 1) AS top_reason_for,
       round(100.0 * count(*) FILTER (WHERE r.rank = 1) / nullif(sum(count(*) FILTER (WHERE r.rank = 1)) OVER (), 0),
             1) AS top_reason_pct,
       count(*) FILTER (WHERE r.rank = 1 AND r.contribution > 0) AS raises_score,
       count(*) AS in_top_reasons,
       round(avg(abs(r.contribution))::numeric, 3) AS mean_abs_contribution
FROM predictions.churn_reasons r
JOIN latest ON r.prediction_date = latest.day
GROUP BY r.feature
ORDER BY top_reason_for DESC, mean_abs_contribution DESC;
