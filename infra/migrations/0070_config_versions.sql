-- Live, versioned configuration per org, and the version each message and delivery used.
create table config_versions (
    org_id        text not null,
    version       integer not null check (version > 0),
    document      jsonb not null,                      -- the JSON form of the org's part of lifeline.yaml
    author        text not null,
    created_at    timestamptz not null default now(),
    comment       text not null default '',
    restored_from integer,                             -- a rollback copies version n into a new version
    primary key (org_id, version)
);

alter table messages add column config_version integer;     -- the version in force when it was routed
alter table deliveries add column config_version integer;   -- pinned: retries render with it
alter table deliveries add column filter_reason text;       -- status 'filtered': which step and why

alter table deliveries drop constraint deliveries_status_check;
alter table deliveries add constraint deliveries_status_check
    check (status in ('pending', 'started', 'delivered', 'dead_lettered', 'skipped', 'filtered'));
