-- The bridge's tables (SQLite, the embedded default). The same tables and
-- columns as ../postgres; see the comments there.

CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    kind INTEGER NOT NULL,
    conversation_key TEXT NOT NULL,
    payload BLOB NOT NULL,
    worker TEXT NOT NULL,
    origin TEXT NOT NULL,
    source TEXT NOT NULL,
    error_code INTEGER,
    error_message TEXT,
    chunks INTEGER NOT NULL,
    truncated BOOLEAN NOT NULL,
    created_unix_ms INTEGER NOT NULL,
    deadline_unix_ms INTEGER NOT NULL,
    topic TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset INTEGER NOT NULL,
    stored_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (message_id, kind)
);

CREATE INDEX messages_by_conversation ON messages (conversation_key, seq);

CREATE TABLE consumer_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    updated_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (group_id, topic, kafka_partition)
);

CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    kafka_partition INTEGER NOT NULL,
    kafka_offset INTEGER NOT NULL,
    record_key BLOB,
    error TEXT NOT NULL,
    raw BLOB NOT NULL,
    created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (topic, kafka_partition, kafka_offset)
);
