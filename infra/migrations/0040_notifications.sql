-- On-call notifications (e-mail, chat webhook, PagerDuty Events v2): one row per (event, channel), written before
-- the send and updated after it, so every notification is recorded, retried until sent or out of attempts, and
-- never sent twice for the same event. Bodies hold ids and links only, never message content.
create table notifications (
    id          bigint generated always as identity primary key,
    org_id      text not null,
    key         text not null,                       -- <event id>:<channel>: a retried event finds its row
    channel     text not null,                       -- oncall.channels[].name
    kind        text not null,                       -- email | chat | pagerduty
    event       text not null,                       -- case.escalated | case.resolved | sla.escalated | sla.resolved
    subject     text not null,                       -- case id, or sla/objective
    dedup_key   text not null,                       -- one page per case / violation; its resolve uses the same key
    action      text not null,                       -- trigger | resolve
    body        jsonb not null,
    status      text not null default 'pending',     -- pending | sent | failed
    attempts    integer not null default 0,
    last_error  text,
    created_at  timestamptz not null default now(),
    next_at     timestamptz not null default now(),
    sent_at     timestamptz,
    unique (org_id, key)
);
create index notifications_pending on notifications (next_at) where status = 'pending';
create index notifications_dedup on notifications (org_id, channel, dedup_key, id);
