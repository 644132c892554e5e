-- Score distribution per prediction day (last 30 days): volume, mean, quartiles, share predicted to churn.
SELECT prediction_date,
       count(*)                                                    AS customers,
       round(avg(score)::numeric, 4)                               AS mean_score,
       round(percentile_cont(0.25) WITHIN GROUP (ORDER BY score)::numeric, 4) AS p25,
       round(percentile_cont(0.50) WITHIN GROUP (ORDER BY score)::numeric, 4) AS median,
       round(percentile_cont(0.75) WITHIN GROUP (ORDER BY score)::numeric, 4) AS p75,
       round(avg(label)::numeric, 4)                               AS share_label_1
FROM predictions.churn
WHERE prediction_date > (SELECT max(prediction_date) - 30 FROM predictions.churn)
GROUP BY prediction_date
ORDER BY prediction_date;
