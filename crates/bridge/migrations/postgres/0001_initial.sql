-- The bridge's tables (PostgreSQL). Applied by `sqlx::migrate!` at start-up;
-- the SQLite set in ../sqlite has the same tables and columns.

-- Every inbound message and final reply, once: (message_id, kind) is unique,
-- so a record delivered twice is stored once. `seq` orders one conversation's
-- history: rows of one conversation come from one partition, written by
-- transactions serialized on that partition's consumer_offsets row.
CREATE TABLE messages (
    seq BIGSERIAL PRIMARY KEY,
    message_id TEXT NOT NULL,
    -- 1 inbound, 2 reply (rumor.events.v1.MessageRecord.Kind).
    kind INTEGER NOT NULL,
    conversation_key TEXT NOT NULL,
    payload BYTEA NOT NULL,
    worker TEXT NOT NULL,
    origin TEXT NOT NULL,
    source TEXT NOT NULL,
    error_code INTEGER,
    error_message TEXT,
    chunks BIGINT NOT NULL,
    truncated BOOLEAN NOT NULL,
    created_unix_ms BIGINT NOT NULL,
    deadline_unix_ms BIGINT NOT NULL,
    -- Where the record was read from.
    topic TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset BIGINT NOT NULL,
    stored_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (message_id, kind)
);

CREATE INDEX messages_by_conversation ON messages (conversation_key, seq);

-- The next offset to read per consumer group and partition: advanced in the
-- same transaction as the rows read before it, with a compare-and-set.
CREATE TABLE consumer_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, kafka_partition)
);

-- Records that could not be decoded or stored, kept with the reason.
CREATE TABLE dead_letters (
    id BIGSERIAL PRIMARY KEY,
    topic TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset BIGINT NOT NULL,
    record_key BYTEA,
    error TEXT NOT NULL,
    raw BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (topic, kafka_partition, kafka_offset)
);
