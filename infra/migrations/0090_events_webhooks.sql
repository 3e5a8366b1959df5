-- The event log and webhook subscriptions (docs/webhooks.md).
--
-- Events are written by triggers in the same transaction as the change they report (a message stored, a delivery
-- finished, a case moving stage, an SLA violation opening or closing, a configuration version), so an event exists
-- exactly when its change committed, whichever process or code path made it. They carry ids, types and times, never
-- message content. Each subscription reads the log with its own cursor (xid, id); `xid` lets a reader take only
-- events of transactions that have all finished (pg_snapshot_xmin), so a slow transaction's event is never
-- skipped by a cursor that has already moved past it.

create table events (
    id           bigint generated always as identity primary key,
    org_id       text not null,
    type         text not null,                          -- message.received, delivery.delivered, case.opened, ...
    occurred_at  timestamptz not null default now(),
    xid          xid8 not null default pg_current_xact_id(),
    subject      text not null default '',               -- message id, case id, <sla>/<objective>, config version
    channel      text,
    destination  text,
    message_type text,
    data         jsonb not null default '{}'             -- ids, counts and states only
);
create index events_org_xid on events (org_id, xid, id);
create index events_org_id on events (org_id, id);
create index events_occurred on events using brin (occurred_at);  -- retention prunes by time; cheap to keep

create table webhook_subscriptions (
    id                 text primary key,                 -- wh_<random>
    org_id             text not null,
    url                text not null,
    description        text not null default '',
    events             text[] not null,                  -- exact types, 'case.*' prefixes, or '*'
    channels           text[] not null default '{}',     -- empty: any
    destinations       text[] not null default '{}',
    message_types      text[] not null default '{}',     -- globs: 'ADT^*'
    secret_enc         bytea not null,                   -- AES-256-GCM with the store key
    key_id             text not null,
    enabled            boolean not null default true,
    max_attempts       integer not null default 20 check (max_attempts between 1 and 100),
    initial_interval_s double precision not null default 1 check (initial_interval_s > 0),
    maximum_interval_s double precision not null default 600 check (maximum_interval_s > 0),
    cursor_xid         xid8 not null,                    -- events up to (cursor_xid, cursor_id) are admitted
    cursor_id          bigint not null default 0,
    last_seq           bigint not null default 0,        -- sequence numbers given to this subscription's sends
    created_at         timestamptz not null default now(),
    created_by         text not null default '',
    updated_at         timestamptz not null default now()
);
create index webhook_subscriptions_org on webhook_subscriptions (org_id, created_at);

-- One row per (subscription, admitted event): its sequence number, attempts and outcome. A replay is a new row.
create table webhook_deliveries (
    id              bigint generated always as identity primary key,
    org_id          text not null,
    subscription_id text not null references webhook_subscriptions (id) on delete cascade,
    event_id        bigint not null,
    event_type      text not null,
    seq             bigint not null,
    status          text not null default 'pending' check (status in ('pending', 'delivered', 'dead_lettered')),
    attempts        integer not null default 0,
    next_at         timestamptz not null default now(),
    last_error      text,
    response_status integer,
    replay_of       bigint,
    replayed_at     timestamptz,                         -- a dead letter that was queued again
    created_at      timestamptz not null default now(),
    finished_at     timestamptz,
    unique (subscription_id, seq)
);
create index webhook_deliveries_pending on webhook_deliveries (subscription_id, seq) where status = 'pending';
create index webhook_deliveries_sub on webhook_deliveries (org_id, subscription_id, id desc);
create index webhook_deliveries_created on webhook_deliveries using brin (created_at);

select lifeline_enable_rls('events');
select lifeline_enable_rls('webhook_subscriptions');
select lifeline_enable_rls('webhook_deliveries');

-- The triggers. They run as the writing role under its row-level security; the event belongs to the row's org.
create or replace function lifeline_event_message() returns trigger language plpgsql as $$
begin
    insert into events (org_id, type, subject, channel, message_type, data)
    values (new.org_id, case when new.status = 'rejected' then 'message.rejected' else 'message.received' end,
            new.id, new.channel, new.message_type,
            jsonb_build_object('message_id', new.id, 'channel', new.channel, 'message_type', new.message_type,
                               'status', new.status, 'ack_code', new.ack_code, 'source', new.source));
    return null;
end
$$;
create trigger events_message after insert on messages for each row execute function lifeline_event_message();

create or replace function lifeline_event_delivery() returns trigger language plpgsql as $$
declare
    m record;
begin
    select channel, message_type into m from messages where id = new.message_id;
    insert into events (org_id, type, subject, channel, destination, message_type, data)
    values (new.org_id, 'delivery.' || new.status, new.message_id, m.channel, new.destination, m.message_type,
            jsonb_build_object('message_id', new.message_id, 'destination', new.destination, 'channel', m.channel,
                               'message_type', m.message_type, 'attempts', new.attempts,
                               'latency_ms', new.latency_ms, 'replay', new.replay_count,
                               'workflow_id', new.workflow_id, 'config_version', new.config_version));
    return null;
end
$$;
create trigger events_delivery after update of status on deliveries for each row
    when (old.status is distinct from new.status
          and new.status in ('delivered', 'dead_lettered', 'filtered', 'skipped'))
    execute function lifeline_event_delivery();

create or replace function lifeline_event_case() returns trigger language plpgsql as $$
declare
    kinds text[] := '{}';
    k text;
begin
    if tg_op = 'INSERT' then
        kinds := array['case.opened'];
        if new.stage not in ('detected', 'diagnosing') then
            kinds := kinds || ('case.' || new.stage);
        end if;
    else
        if coalesce(old.approver, '') = '' and coalesce(new.approver, '') <> '' then
            kinds := kinds || 'case.approved'::text;
        end if;
        -- detected and diagnosing are the case's first moments, reported as case.opened.
        if old.stage is distinct from new.stage and new.stage not in ('detected', 'diagnosing') then
            kinds := kinds || ('case.' || new.stage);
        end if;
    end if;
    foreach k in array kinds loop
        insert into events (org_id, type, subject, data)
        values (new.org_id, k, new.case_id,
                jsonb_build_object('case_id', new.case_id, 'run_id', new.run_id, 'kind', new.kind,
                                   'subject', new.subject, 'stage', new.stage, 'mode', new.mode,
                                   'action', new.action, 'signature', new.signature));
    end loop;
    return null;
end
$$;
create trigger events_case after insert or update on cases for each row execute function lifeline_event_case();

create or replace function lifeline_event_sla() returns trigger language plpgsql as $$
declare
    kind text;
begin
    if tg_op = 'INSERT' then
        kind := 'sla.violated';
    elsif old.ended_at is null and new.ended_at is not null then
        kind := 'sla.restored';
    elsif old.escalated_at is null and new.escalated_at is not null then
        kind := 'sla.escalated';
    else
        return null;
    end if;
    insert into events (org_id, type, subject, data)
    values (new.org_id, kind, new.sla || '/' || new.objective,
            jsonb_build_object('violation_id', new.id, 'sla', new.sla, 'objective', new.objective,
                               'subject', new.subject, 'target', new.target, 'started_at', new.started_at,
                               'ended_at', new.ended_at, 'case_id', new.case_id));
    return null;
end
$$;
create trigger events_sla after insert or update on sla_violations for each row execute function lifeline_event_sla();

create or replace function lifeline_event_config() returns trigger language plpgsql as $$
begin
    insert into events (org_id, type, subject, data)
    values (new.org_id, 'config.changed', new.version::text,
            jsonb_build_object('version', new.version, 'author', new.author,
                               'restored_from', new.restored_from));
    return null;
end
$$;
create trigger events_config after insert on config_versions for each row execute function lifeline_event_config();
