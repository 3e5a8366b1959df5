-- One send at a time per delivery. The fast path runs attempt 1 inside a workflow task; a task that times out on
-- a starved worker is retried while the first attempt may still be sending. The attempt that holds the lease
-- sends; another one waits for its outcome instead of sending the message a second time.
alter table deliveries add column send_lease_until timestamptz;
