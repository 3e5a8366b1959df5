-- Lifeline initial schema. Every table carries org_id (tenancy); bodies are encrypted at rest.

-- Every message received, accepted or rejected (invariant 2: nothing is dropped).
create table messages (
    id               text primary key,                 -- time-ordered ULID, readable in workflow ids
    seq              bigint generated always as identity unique, -- accept order, the basis of FIFO lanes
    org_id           text not null,
    channel          text not null,
    received_at      timestamptz not null default now(),
    status           text not null check (status in ('accepted', 'rejected', 'routed', 'unrouted')),
    message_type     text not null default '',          -- MSH-9.1^MSH-9.2, no PHI
    message_code     text not null default '',
    trigger_event    text not null default '',
    control_id       text not null default '',          -- MSH-10
    version          text not null default '',
    sending_app      text not null default '',
    sending_facility text not null default '',
    content_hash     bytea not null,                    -- sha256 of the normalised message, for resend detection
    size_bytes       integer not null,
    key_id           text not null,
    body_enc         bytea not null,                    -- AES-256-GCM(nonce || ciphertext) of the raw message
    findings         jsonb not null default '[]',
    ack_code         text not null,
    source           text not null default 'mllp',      -- mllp | rest | replay | demo
    peer             text,                              -- remote address of the sender
    dispatched_at    timestamptz                        -- outbox: null until routed to deliveries
);
create unique index messages_resend on messages (org_id, channel, sending_app, sending_facility, control_id, content_hash)
    where status <> 'rejected';
create index messages_outbox on messages (seq) where dispatched_at is null and status = 'accepted';
create index messages_org_received on messages (org_id, received_at desc);
create index messages_org_channel on messages (org_id, channel, received_at desc);

-- One row per (message, destination): the unit a DeliveryWorkflow drives.
create table deliveries (
    message_id    text not null references messages (id),
    destination   text not null,
    org_id        text not null,
    seq           bigint not null,                      -- copied from messages.seq: lane order
    lane          text,                                 -- null: unordered; '' the whole destination; else the key value
    status        text not null default 'pending'
                  check (status in ('pending', 'started', 'delivered', 'dead_lettered', 'skipped')),
    attempts      integer not null default 0,
    workflow_id   text not null,
    created_at    timestamptz not null default now(),
    started_at    timestamptz,
    first_attempt_at timestamptz,
    finished_at   timestamptz,
    latency_ms    integer,
    last_error    text,
    peer_answer   text,                                 -- ACK code / HTTP status and error text, no body
    replay_count  integer not null default 0,
    primary key (message_id, destination)
);
create index deliveries_pending on deliveries (org_id, destination, seq) where status in ('pending', 'started');
create index deliveries_lane on deliveries (destination, lane, seq) where lane is not null;
create index deliveries_status on deliveries (org_id, status, created_at desc);

create table delivery_attempts (
    id           bigint generated always as identity primary key,
    message_id   text not null,
    destination  text not null,
    org_id       text not null,
    attempt      integer not null,
    at           timestamptz not null default now(),
    outcome      text not null check (outcome in ('delivered', 'retryable', 'permanent')),
    error_class  text,                                  -- refused | reset | timeout | tls | dns | ack_error | ack_reject | http_4xx | http_5xx | ...
    error        text,
    peer_answer  text,
    duration_ms  integer,
    foreign key (message_id, destination) references deliveries (message_id, destination)
);
create index delivery_attempts_delivery on delivery_attempts (message_id, destination, attempt);
create index delivery_attempts_recent on delivery_attempts (org_id, destination, at desc);

create table dead_letters (
    id           bigint generated always as identity primary key,
    org_id       text not null,
    message_id   text not null,
    destination  text not null,
    created_at   timestamptz not null default now(),
    error_type   text not null,
    reason       text not null,
    attempts     jsonb not null default '[]',
    status       text not null default 'open' check (status in ('open', 'replayed', 'discarded')),
    replay_workflow_id text,
    resolved_at  timestamptz,
    resolved_by  text,
    foreign key (message_id, destination) references deliveries (message_id, destination)
);
create index dead_letters_open on dead_letters (org_id, status, created_at desc);
create unique index dead_letters_one_open on dead_letters (message_id, destination) where status = 'open';

-- Append-only audit trail with a hash chain (verified by `lifeline audit verify`).
create table audit_log (
    id          bigint generated always as identity primary key,
    org_id      text not null,
    at          timestamptz not null default now(),
    actor       text not null,
    role        text,
    action      text not null,
    subject     text,
    detail      jsonb not null default '{}',
    remote_addr text,
    prev_hash   bytea,
    hash        bytea not null
);
create index audit_log_org_at on audit_log (org_id, at desc);

-- API keys for EHR senders (role sender); only a hash of the key is kept.
create table api_keys (
    id          bigint generated always as identity primary key,
    org_id      text not null,
    name        text not null,
    key_hash    bytea not null unique,
    role        text not null default 'sender',
    created_at  timestamptz not null default now(),
    revoked_at  timestamptz
);
