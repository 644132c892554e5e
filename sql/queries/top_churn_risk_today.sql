-- Top 20 customers most likely to churn, from the latest successfully published batch day.
-- (The latest day with a 'success' run: a day still loading or failed is never read.)
WITH latest AS (
    SELECT max(prediction_date) AS day
    FROM ops.batch_runs
    WHERE model_name = 'churn' AND status = 'success'
)
SELECT p.customer_id, round(p.score::numeric, 4) AS churn_probability, p.label, p.model_version, p.prediction_date
FROM predictions.churn p
JOIN latest ON p.prediction_date = latest.day
ORDER BY p.score DESC, p.customer_id
LIMIT 20;
