-- Row-level security on token_revocations like every tenant table (migration 0010's helper; when 0010 is applied
-- after this file on an existing database, its loop covers this table).
do $$
begin
    if exists (select 1 from pg_proc where proname = 'lifeline_enable_rls') then
        perform lifeline_enable_rls('token_revocations');
    end if;
end
$$;
