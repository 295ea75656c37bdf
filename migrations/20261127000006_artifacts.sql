-- Artifacts: metadata from the job's events; the bytes live in the blob store.
CREATE TABLE artifact_view
(
    artifact_id  uuid PRIMARY KEY,
    job_id       uuid        NOT NULL,
    product_id   text        NOT NULL,
    name         text        NOT NULL,
    sha256       text        NOT NULL,
    size         bigint      NOT NULL,
    content_type text        NOT NULL,
    blob_key     text        NOT NULL,
    factory_id   uuid,
    created_at   timestamptz NOT NULL,
    deleted_at   timestamptz
);
CREATE INDEX artifact_view_job ON artifact_view (job_id, created_at);
