-- SLA compliance, flow-read indexes, and an append-only audit log.

-- One row per SLA objective breach: opened when an evaluation finds the objective violated, closed (ended_at)
-- when a later evaluation finds it met again. At most one open row per (org, sla, objective).
create table sla_violations (
    id            bigint generated always as identity primary key,
    org_id        text not null,
    sla           text not null,
    objective     text not null,                       -- p95_latency | max_backlog_age | min_success_rate | uptime
    subject       text not null default '',            -- destination:<name> | channel:<name> | org
    target        double precision not null,
    started_at    timestamptz not null,
    ended_at      timestamptz,
    worst_value   double precision not null,            -- highest latency/age, lowest rate seen while open
    last_value    double precision not null,
    case_id       text,                                 -- remediation case fed with this violation (signal-with-start)
    notified_at   timestamptz,                          -- alert webhook posted (when no case kind fits)
    escalated_at  timestamptz,                          -- still open after escalate_after: escalation posted
    updated_at    timestamptz not null default now()
);
create unique index sla_violations_one_open on sla_violations (org_id, sla, objective) where ended_at is null;
create index sla_violations_period on sla_violations (org_id, started_at, ended_at);

-- Flow reads (GET /api/flow, reports, /metrics): deliveries finished in a window, dead letters and attempts by time.
create index deliveries_finished on deliveries (org_id, finished_at) where finished_at is not null;
create index deliveries_created on deliveries (org_id, created_at);
create index dead_letters_org_created on dead_letters (org_id, created_at);
create index delivery_attempts_org_at on delivery_attempts (org_id, at);
create index audit_log_org_actor on audit_log (org_id, actor, id);
create index audit_log_org_action on audit_log (org_id, action, id);

-- The audit log is append-only: UPDATE, DELETE and TRUNCATE are refused. Tampering needs the table owner or a
-- superuser to `alter table audit_log disable trigger ...` first, and `lifeline audit verify` still finds it.
create function audit_log_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'audit_log is append-only: % refused', tg_op using errcode = 'insufficient_privilege';
end
$$;
create trigger audit_log_no_update_delete before update or delete on audit_log
    for each row execute function audit_log_append_only();
create trigger audit_log_no_truncate before truncate on audit_log
    for each statement execute function audit_log_append_only();
