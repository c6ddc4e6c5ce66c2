-- A message id is unique within its conversation (see ../postgres). SQLite
-- cannot drop a table constraint, so the table is rebuilt with the new one.
CREATE TABLE messages_new (
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
    UNIQUE (conversation_key, message_id, kind)
);
INSERT INTO messages_new SELECT * FROM messages;
DROP TABLE messages;
ALTER TABLE messages_new RENAME TO messages;
CREATE INDEX messages_by_conversation ON messages (conversation_key, seq);
