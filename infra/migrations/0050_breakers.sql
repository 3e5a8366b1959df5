-- Circuit breaker state per destination, as the worker that last changed it saw it (visibility for the API and
-- dashboard; the breaker itself lives in each worker's memory, see activities/breaker.py).
create table destination_breakers (
    org_id        text not null,
    destination   text not null,
    state         text not null check (state in ('closed', 'open', 'half_open')),
    failures      integer not null default 0,        -- connection failures in a row
    opened_at     timestamptz,
    next_probe_at timestamptz,
    probe_interval_s double precision,
    last_error    text,                               -- error class only, never message content
    worker        text not null default '',           -- host:pid of the worker that changed it
    updated_at    timestamptz not null default now(),
    primary key (org_id, destination)
);
