-- When the monitor first saw each engine channel in its current state, so a channel held in a transitional state
-- (STOPPING, STARTING, PAUSING) past monitor.engine_channel_stopped.stuck_after is detected as stuck.
alter table monitor_engine_stats add column if not exists state_since timestamptz;
