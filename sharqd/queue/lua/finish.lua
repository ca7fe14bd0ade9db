-- ARGV[5] queue_id, [6] job_id.  Returns 1 when finished, 0 when not active.
return finish_job(ARGV[5], ARGV[6])
