-- A message id is unique within its conversation: the worker's
-- de-duplication window is keyed by (conversation key, id), and so is the
-- stored row. The same id in two conversations is two messages, both kept.
ALTER TABLE messages DROP CONSTRAINT messages_message_id_kind_key;
ALTER TABLE messages ADD CONSTRAINT messages_conversation_message_kind_key
    UNIQUE (conversation_key, message_id, kind);
