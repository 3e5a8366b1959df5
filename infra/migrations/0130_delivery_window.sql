-- The unordered delivery window (destinations.max_in_flight): counting a destination's started unordered
-- deliveries on every completion must not walk its pending backlog, and the dispatcher's ordered claim must not walk
-- the unordered backlog that now waits in the outbox.
create index if not exists deliveries_started_unordered on deliveries (org_id, destination)
    where status = 'started' and lane is null;
create index if not exists deliveries_pending_ordered on deliveries (seq)
    where status = 'pending' and lane is not null;
