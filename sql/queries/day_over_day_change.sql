-- Customers whose churn score moved most between the two latest published days (and by how much).
WITH days AS (
    SELECT prediction_date AS day
    FROM ops.batch_runs
    WHERE model_name = 'churn' AND status = 'success'
    GROUP BY prediction_date
    ORDER BY prediction_date DESC
    LIMIT 2
), bounds AS (
    SELECT max(day) AS today, min(day) AS yesterday FROM days HAVING count(*) = 2
)
SELECT t.customer_id,
       round(y.score::numeric, 4)             AS previous_score,
       round(t.score::numeric, 4)             AS score,
       round((t.score - y.score)::numeric, 4) AS change,
       y.model_version                        AS previous_version,
       t.model_version                        AS version
FROM bounds
JOIN predictions.churn t ON t.prediction_date = bounds.today
JOIN predictions.churn y ON y.prediction_date = bounds.yesterday AND y.customer_id = t.customer_id
ORDER BY abs(t.score - y.score) DESC, t.customer_id
LIMIT 50;
