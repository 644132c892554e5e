-- Why are today's 10 riskiest customers risky? Their churn probability and the three features that pushed their
-- score most (predictions.churn_reasons, written by the nightly run in the same swap as the scores; models.yaml
-- churn batch.explain). contribution is in log-odds: > 0 raises the churn risk, < 0 lowers it.
WITH latest AS (
    SELECT max(prediction_date) AS day
    FROM ops.batch_runs
    WHERE model_name = 'churn' AND status = 'success'
), riskiest AS (
    SELECT p.prediction_date, p.customer_id, p.score
    FROM predictions.churn p
    JOIN latest ON p.prediction_date = latest.day
    ORDER BY p.score DESC, p.customer_id
    LIMIT 10
)
SELECT k.customer_id, round(k.score::numeric, 4) AS churn_probability, r.rank, r.feature,
       coalesce(r.category, r.value::text) AS value, round(r.contribution::numeric, 3) AS contribution
FROM riskiest k
JOIN predictions.churn_reasons r USING (prediction_date, customer_id)
ORDER BY k.score DESC, k.customer_id, r.rank;
