-- Token buckets of the API's rate limits (api/ratelimit.py), shared by every API process through this table.
-- One row per (org, scope, principal): `tokens` left at `updated_at`; refills are computed when a request takes a
-- token (infra/store/rate_limits.py), so idle buckets cost nothing. `refused` counts refusals for /metrics.
create table if not exists rate_buckets (
    org_id      text not null,
    scope       text not null check (scope in ('ingress', 'api')),
    subject     text not null,
    role        text not null,
    tokens      double precision not null,
    updated_at  timestamptz not null default clock_timestamp(),
    allowed     boolean not null default true,
    refused     bigint not null default 0,
    primary key (org_id, scope, subject)
);

do $$
begin
    if exists (select 1 from pg_proc where proname = 'lifeline_enable_rls') then
        perform lifeline_enable_rls('rate_buckets');
    end if;
end
$$;
