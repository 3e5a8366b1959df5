-- Tenant isolation enforced by PostgreSQL: row-level security on org_id, and an application role that owns nothing.
--
-- Every transaction of the application names its org (infra.store.org_tx: set_config('lifeline.org', org, true))
-- and sees and writes that org's rows only. Cross-org work (the dispatcher's outbox, the flow monitor's snapshot,
-- audit chain verification, API key lookup, migrations) names a purpose in 'lifeline.system' instead
-- (infra.store.system_tx, a closed list of purposes). A transaction that sets neither sees no rows at all.
-- FORCE makes the policies bind the tables' owner too; only superusers and BYPASSRLS roles are exempt.

-- The policy, for this migration's tables and for every later tenant table: `select lifeline_enable_rls('t');`
create or replace function lifeline_enable_rls(t regclass) returns void language plpgsql as $$
begin
    execute format('alter table %s enable row level security', t);
    execute format('alter table %s force row level security', t);
    if not exists (select 1 from pg_policy where polrelid = t and polname = 'lifeline_org') then
        execute format(
            'create policy lifeline_org on %s'
            ' using (org_id = current_setting(''lifeline.org'', true)'
            '        or coalesce(current_setting(''lifeline.system'', true), '''') <> '''')'
            ' with check (org_id = current_setting(''lifeline.org'', true)'
            '        or coalesce(current_setting(''lifeline.system'', true), '''') <> '''')', t);
    end if;
end
$$;

do $$
declare
    t regclass;
begin
    for t in
        select c.oid::regclass from pg_class c join pg_namespace n on n.oid = c.relnamespace
        join pg_attribute a on a.attrelid = c.oid and a.attname = 'org_id' and not a.attisdropped
        where n.nspname = current_schema() and c.relkind in ('r', 'p')
    loop
        perform lifeline_enable_rls(t);
    end loop;
end
$$;

-- The role the application runs as (LIFELINE_DATABASE_ROLE, default lifeline_app): it owns no table, so it
-- cannot disable row-level security, alter tables or drop the audit log's triggers. Creating it needs CREATEROLE;
-- where the migrating user lacks it, create the role beforehand (docs/deployment.md) and this grants it.
do $$
begin
    if not exists (select 1 from pg_roles where rolname = 'lifeline_app') then
        begin
            create role lifeline_app nologin;
        exception
            when insufficient_privilege then
                raise notice 'cannot create role lifeline_app; create it and re-grant (docs/deployment.md)';
            when duplicate_object then
                null;  -- another database of the cluster created it just now
        end;
    end if;
    if exists (select 1 from pg_roles where rolname = 'lifeline_app') then
        execute format('grant usage on schema %I to lifeline_app', current_schema());
        execute format('grant select, insert, update, delete on all tables in schema %I to lifeline_app',
                       current_schema());
        execute format('grant usage, select on all sequences in schema %I to lifeline_app', current_schema());
        -- Tables and sequences later migrations create (run by the same owner) get the same grants.
        execute format('alter default privileges in schema %I grant select, insert, update, delete on tables'
                       ' to lifeline_app', current_schema());
        execute format('alter default privileges in schema %I grant usage, select on sequences to lifeline_app',
                       current_schema());
        -- The audit log is append-only for the application; schema_migrations is the migrator's.
        revoke update, delete, truncate on audit_log from lifeline_app;
        revoke insert, update, delete, truncate on schema_migrations from lifeline_app;
    end if;
end
$$;
