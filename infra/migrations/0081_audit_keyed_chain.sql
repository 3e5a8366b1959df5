-- The keyed audit chain (infra/store/audit.py): each row gets its org's sequence number and the id of the HMAC key
-- that chains it. Rows written before this migration keep key_id null: they stay verifiable as the old unkeyed
-- SHA-256 chain, and the first keyed row of each org seals them (its MAC covers the last unkeyed hash).
alter table audit_log add column if not exists seq bigint;
alter table audit_log add column if not exists key_id text;

alter table audit_log disable trigger audit_log_no_update_delete;
update audit_log a set seq = n.seq
from (select id, row_number() over (partition by org_id order by id) as seq from audit_log) n
where a.id = n.id and a.seq is null;
alter table audit_log enable trigger audit_log_no_update_delete;

alter table audit_log alter column seq set not null;
-- Two writers can never fork an org's chain: appends serialise on an advisory lock, and this refuses a second row
-- at the same place whatever happens.
create unique index if not exists audit_log_org_seq on audit_log (org_id, seq);
