-- Self-healing: remediation cases, the learning loop, and operator-set destination state.

-- One row per case run (RemediationCaseWorkflow), upserted at each stage change.
-- case_id is the workflow id (case:<kind>:<subject>); a subject that breaks again after its case closed gets a
-- new run of the same workflow id, so run_id keeps the history of earlier cases.
create table cases (
    case_id           text not null,
    run_id            text not null,
    org_id            text not null,
    kind              text not null,
    subject           text not null,
    stage             text not null,
    mode              text not null,
    signature         text not null default '',
    opened_at         timestamptz not null,
    first_evidence_at timestamptz,                      -- observed_at of the first evidence signal
    onset_at          timestamptz,                      -- when the symptom began per the store (diagnosis)
    resolved_at       timestamptz,                      -- resolved, escalated or rejected: when the case closed
    mttd_ms           bigint,                           -- opened_at - coalesce(onset_at, first_evidence_at)
    mttr_ms           bigint,                           -- resolved_at - opened_at (resolved cases only)
    action            text,                             -- the action pending or last taken
    approver          text,
    evidence_count    integer not null default 0,
    diagnosis         jsonb,
    attempts          jsonb not null default '[]',
    updated_at        timestamptz not null default now(),
    primary key (case_id, run_id)
);
create index cases_org_opened on cases (org_id, opened_at desc);
create index cases_org_stage on cases (org_id, stage, opened_at desc);

-- The learning loop: each closed case records, per action it tried, whether verification passed.
create table resolutions (
    org_id     text not null,
    signature  text not null,
    action     text not null,
    successes  integer not null default 0,
    failures   integer not null default 0,
    last_at    timestamptz not null default now(),
    unique (org_id, signature, action)
);

-- Destinations an operator or a case paused: the dispatcher starts no new delivery to them.
create table destination_state (
    org_id      text not null,
    destination text not null,
    paused      boolean not null default false,
    reason      text,
    changed_by  text,
    changed_at  timestamptz not null default now(),
    primary key (org_id, destination)
);
