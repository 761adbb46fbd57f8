-- One NOTIFY per queue per statement (Postgres folds repeats within a transaction), carrying
-- only the queue name: a wake-up hint, the table stays the truth.
CREATE OR REPLACE FUNCTION lettuce.jobs_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('lettuce_jobs', q.queue)
       FROM (SELECT DISTINCT n.queue FROM new_jobs n WHERE n.state = 'available') q;
    RETURN NULL;
END
$$;
CREATE OR REPLACE TRIGGER jobs_notify AFTER INSERT ON lettuce.job_queue
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION lettuce.jobs_notify()
