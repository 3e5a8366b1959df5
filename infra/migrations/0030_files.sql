-- File and SFTP sources: which files were read, how far, and what each message became (exactly once per file).

-- One row per distinct file seen by a channel: identity is (path, size, content hash).
create table file_ingests (
    id            bigint generated always as identity primary key,
    org_id        text not null,
    channel       text not null,
    source        text not null check (source in ('file', 'sftp')),
    path          text not null,                        -- local path or sftp://user@host:port/dir/name
    size_bytes    bigint not null,
    content_hash  bytea not null,                       -- sha256 of the whole file
    status        text not null default 'reading' check (status in ('reading', 'done')),
    next_index    integer not null default 0,           -- messages before this index are recorded in file_messages
    next_offset   bigint not null default 0,            -- byte offset where message next_index starts
    messages      integer not null default 0,
    accepted      integer not null default 0,
    rejected      integer not null default 0,
    problems      jsonb not null default '[]',          -- envelope problems (trailer counts), no message content
    outcome       text,                                 -- processed | error | deleted | duplicate
    seen_again    integer not null default 0,           -- the same file (same path, size and content) came back
    started_at    timestamptz not null default now(),
    finished_at   timestamptz,
    unique (org_id, channel, path, size_bytes, content_hash)
);
create index file_ingests_recent on file_ingests (org_id, channel, started_at desc);

-- Each message of a file: its position and what the accept path made of it.
create table file_messages (
    ingest_id     bigint not null references file_ingests (id),
    idx           integer not null,
    org_id        text not null,
    message_id    text not null references messages (id),
    byte_offset   bigint not null,
    status        text not null,                        -- accepted | rejected
    ack_code      text not null,
    ack           text not null,                        -- the ACK the accept path built (for the batch ACK file)
    primary key (ingest_id, idx)
);

-- What each source poller last saw, for the flow monitor (stopped producing, growing error/, SFTP failures).
create table file_sources (
    org_id          text not null,
    channel         text not null,
    kind            text not null check (kind in ('file', 'sftp')),
    location        text not null,                      -- dir or sftp://user@host:port/dir (no secrets)
    last_poll_at    timestamptz,
    last_ok_at      timestamptz,
    last_file_at    timestamptz,                        -- when the last new file was picked up
    files_total     bigint not null default 0,
    error_files     integer not null default 0,         -- files in error/ at the last poll
    consecutive_failures integer not null default 0,
    last_error_class text,                              -- auth | hostkey | refused | timeout | dns | sftp | io
    last_error      text,
    primary key (org_id, channel)
);

-- File and SFTP destinations that batch: messages waiting for their batch file, and the files written.
create table file_batches (
    id            bigint generated always as identity primary key,
    org_id        text not null,
    destination   text not null,
    status        text not null default 'open' check (status in ('open', 'sealed', 'written')), -- sealed: full
    opened_at     timestamptz not null default now(),
    messages      integer not null default 0,
    size_bytes    bigint not null default 0,
    file_name     text,
    written_at    timestamptz
);
create unique index file_batches_one_open on file_batches (org_id, destination) where status = 'open';

create table file_batch_items (
    batch_id      bigint not null references file_batches (id),
    message_id    text not null,
    destination   text not null,
    org_id        text not null,
    seq           bigint not null,
    size_bytes    integer not null,
    key_id        text not null,
    body_enc      bytea not null,                       -- the rendered message, AES-GCM like messages.body_enc
    primary key (message_id, destination)
);
create index file_batch_items_batch on file_batch_items (batch_id, seq);

-- Row-level security on org_id like every tenant table (migration 0010's helper; when 0010 is applied after this
-- file on an existing database, its loop covers these tables).
do $$
begin
    if exists (select 1 from pg_proc where proname = 'lifeline_enable_rls') then
        perform lifeline_enable_rls('file_ingests');
        perform lifeline_enable_rls('file_messages');
        perform lifeline_enable_rls('file_sources');
        perform lifeline_enable_rls('file_batches');
        perform lifeline_enable_rls('file_batch_items');
    end if;
end
$$;
