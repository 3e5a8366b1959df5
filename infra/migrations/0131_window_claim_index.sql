-- A window's claim walks its destination's unordered backlog in seq order and stops after the room it has (without
-- it the planner sorted the whole backlog for every claim: 20 ms with 4,000 pending, 0.2 ms with it).
create index if not exists deliveries_pending_unordered on deliveries (org_id, destination, seq)
    where status = 'pending' and lane is null;
