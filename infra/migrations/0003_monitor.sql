-- Flow monitor state: the previous engine channel stats (for deltas and queue trends) and the EWMA
-- throughput baselines per channel and hour bucket. Written only by the metrics snapshot activity.

create table monitor_engine_stats (
    engine         text not null,
    channel_id     text not null,
    org_id         text not null,
    observed_at    timestamptz not null,
    state          text not null,
    queued         bigint not null default 0,
    errors         bigint not null default 0,
    queued_history bigint[] not null default '{}',      -- oldest first, at most QUEUE_HISTORY_MAX
    primary key (engine, channel_id)
);

create table monitor_baselines (
    channel     text not null,
    bucket      text not null,                          -- how:<0-167> hour of week | hod:<0-23> hour of day
    org_id      text not null,
    mean        double precision not null,              -- EWMA of accepted messages per minute
    samples     integer not null,
    updated_at  timestamptz not null,
    primary key (channel, bucket)
);

-- The snapshot reads the last few minutes of attempts every interval; without this it scans the whole table.
create index delivery_attempts_at on delivery_attempts (at);
-- Blocked-lane heads (dead letters are rare, so this stays small).
create index deliveries_dead_lettered on deliveries (destination, lane, seq) where status = 'dead_lettered';
