-- Revoked bearer tokens (by jti) until they would have expired anyway; checked on every request and approval.
create table if not exists token_revocations (
    jti         text primary key,
    org_id      text not null,
    revoked_at  timestamptz not null default now(),
    revoked_by  text not null,
    expires_at  timestamptz not null,
    reason      text not null default ''
);
create index if not exists token_revocations_expiry on token_revocations (expires_at);
