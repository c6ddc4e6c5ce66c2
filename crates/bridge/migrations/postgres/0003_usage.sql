-- What a model reply cost, as the worker recorded it (NULL on inbound
-- messages and on replies no model answered), so that SQL answers questions
-- like tokens per conversation:
--   SELECT conversation_key, sum(prompt_tokens), sum(completion_tokens)
--   FROM messages WHERE kind = 2 GROUP BY conversation_key;
ALTER TABLE messages ADD COLUMN prompt_tokens BIGINT;
ALTER TABLE messages ADD COLUMN completion_tokens BIGINT;
-- Prompt tokens the backend served from its prefix cache.
ALTER TABLE messages ADD COLUMN cached_tokens BIGINT;
-- Milliseconds from the request to the backend to its first token.
ALTER TABLE messages ADD COLUMN first_token_ms BIGINT;
ALTER TABLE messages ADD COLUMN backend TEXT;
ALTER TABLE messages ADD COLUMN model TEXT;
