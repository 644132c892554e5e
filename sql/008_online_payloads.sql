-- Online payload log (issue 14): a sample of the live requests each serving worker scored, with what it answered,
-- written in the background by serving/payload_log.py. The monitor_<model> DAG adds the day's online traffic to
-- its drift checks; analysts query it like any table:
--
--     SELECT features->>'plan' AS plan, avg(score) FROM ops.online_payloads
--     WHERE model_name = 'churn' AND log_date = current_date GROUP BY 1;
--
-- One row per scored row. `features` is the row as the model saw it (categories by name, a missing value as
-- null), `log_date` the UTC date of the request. Partitioned by day, so that retention drops whole partitions.
CREATE TABLE ops.online_payloads (
    model_name    text             NOT NULL,
    log_date      date             NOT NULL,
    logged_at     timestamptz      NOT NULL,
    model_version integer,
    route         text             NOT NULL,  -- the protocol that took the request: v1, mlflow, oip, lookup
    request_id    text,                       -- X-Request-ID, as in the access logs
    entity_id     bigint,                     -- the entity key, when the client sent one
    features      jsonb            NOT NULL,
    score         double precision NOT NULL,  -- the class-1 probability or the predicted value
    label         smallint                    -- the class label (classifiers)
) PARTITION BY RANGE (log_date);

-- A day's partition, created on first need by the serving writer (it has no CREATE right of its own: this runs
-- with the migration owner's rights, and does exactly this one thing).
CREATE FUNCTION ops.ensure_online_payload_partition(day date) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    name text := 'online_payloads_p' || to_char(day, 'YYYYMMDD');
BEGIN
    IF day IS NULL THEN
        RAISE EXCEPTION 'ensure_online_payload_partition: day is null';
    END IF;
    IF to_regclass('ops.' || name) IS NULL THEN
        -- Two writers may race for the same day: the advisory lock makes the second one find the first's table.
        PERFORM pg_advisory_xact_lock(hashtext('ops.online_payloads'));
        IF to_regclass('ops.' || name) IS NULL THEN
            EXECUTE format('CREATE TABLE ops.%I PARTITION OF ops.online_payloads FOR VALUES FROM (%L) TO (%L)',
                           name, day, day + 1);
        END IF;
    END IF;
    RETURN 'ops.' || name;
END $$;

-- Retention: drop every day's partition before `day` (run by the queue_maintenance DAG). Returns what it dropped.
CREATE FUNCTION ops.drop_online_payloads_before(day date) RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'ops.online_payloads'::regclass
          AND c.relname ~ '^online_payloads_p[0-9]{8}$'
          AND to_date(substr(c.relname, 18), 'YYYYMMDD') < day
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE ops.%I', part.relname);
        RETURN NEXT 'ops.' || part.relname;
    END LOOP;
END $$;

REVOKE ALL ON FUNCTION ops.ensure_online_payload_partition(date), ops.drop_online_payloads_before(date) FROM PUBLIC;
GRANT INSERT ON ops.online_payloads TO platform_serving;
GRANT EXECUTE ON FUNCTION ops.ensure_online_payload_partition(date) TO platform_serving;
GRANT SELECT ON ops.online_payloads TO platform_batch;  -- the monitor reads it
GRANT EXECUTE ON FUNCTION ops.drop_online_payloads_before(date) TO platform_batch;
