-- Read models (projections). Every table here is built from the log alone and is
-- idempotent: each row remembers the last event applied to it.

-- Where each projection is in the log.
CREATE TABLE projection_checkpoints
(
    projection text PRIMARY KEY,
    position   bigint NOT NULL DEFAULT 0
);

-- Jobs: list, detail and the claimable queue. `state` is the job aggregate's state
-- at `version`; the columns are what queries filter and sort on.
CREATE TABLE job_view
(
    job_id                uuid PRIMARY KEY,
    product_id            text        NOT NULL,
    title                 text        NOT NULL,
    stage                 text        NOT NULL,
    priority              text        NOT NULL,
    priority_rank         smallint    NOT NULL,
    required_capabilities text[]      NOT NULL,
    attempts              int         NOT NULL,
    max_attempts          int         NOT NULL,
    lease_factory_id      uuid,
    lease_epoch           bigint,
    lease_expires_at      timestamptz,
    available_at          timestamptz,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    version               bigint      NOT NULL,
    state                 jsonb       NOT NULL
);
CREATE INDEX job_view_claimable ON job_view (priority_rank, created_at, job_id) WHERE stage = 'queued';
CREATE INDEX job_view_product ON job_view (product_id, created_at, job_id);
CREATE INDEX job_view_lease_factory ON job_view (lease_factory_id) WHERE lease_factory_id IS NOT NULL;
CREATE INDEX job_view_lease_expiry ON job_view (lease_expires_at) WHERE lease_expires_at IS NOT NULL;

-- Runs: one row per lease.
CREATE TABLE run_view
(
    run_id        uuid PRIMARY KEY,
    job_id        uuid        NOT NULL,
    product_id    text        NOT NULL,
    factory_id    uuid        NOT NULL,
    epoch         bigint      NOT NULL,
    outcome       text        NOT NULL,
    cost_usd      double precision,
    started_at    timestamptz NOT NULL,
    ended_at      timestamptz,
    last_sequence bigint      NOT NULL
);
CREATE INDEX run_view_job ON run_view (job_id, started_at);
CREATE INDEX run_view_factory ON run_view (factory_id, ended_at);

-- A job's event timeline.
CREATE TABLE job_event_view
(
    job_id      uuid        NOT NULL,
    sequence    bigint      NOT NULL,
    event_type  text        NOT NULL,
    payload     jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, sequence)
);

-- Factories (the fleet map's history part; liveness is in factory_liveness).
CREATE TABLE factory_view
(
    factory_id   uuid PRIMARY KEY,
    name         text        NOT NULL,
    product_ids  text[]      NOT NULL,
    capabilities text[]      NOT NULL,
    capacity     int         NOT NULL,
    status       text        NOT NULL,
    enrolled_at  timestamptz NOT NULL,
    version      bigint      NOT NULL,
    state        jsonb       NOT NULL
);
CREATE INDEX factory_view_products ON factory_view USING gin (product_ids);

-- Credentials: token hashes (SHA-256, hex) of operator, auditor and factory tokens.
CREATE TABLE credential_view
(
    token_hash           text PRIMARY KEY,
    kind                 text    NOT NULL, -- operator | auditor | factory
    subject_id           uuid    NOT NULL, -- token id or factory id
    products             text[]  NOT NULL,
    valid_until          timestamptz,      -- a rotated-out factory token's end
    pending_confirmation boolean NOT NULL DEFAULT false,
    revoked              boolean NOT NULL DEFAULT false
);
CREATE INDEX credential_view_subject ON credential_view (subject_id);

-- Liveness is not history: heartbeats land here, never in the log.
CREATE TABLE factory_liveness
(
    factory_id        uuid PRIMARY KEY,
    last_heartbeat_at timestamptz NOT NULL,
    running_job_ids   uuid[]      NOT NULL DEFAULT '{}'
);
