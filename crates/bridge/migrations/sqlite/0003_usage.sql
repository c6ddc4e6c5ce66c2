-- What a model reply cost (see ../postgres).
ALTER TABLE messages ADD COLUMN prompt_tokens INTEGER;
ALTER TABLE messages ADD COLUMN completion_tokens INTEGER;
ALTER TABLE messages ADD COLUMN cached_tokens INTEGER;
ALTER TABLE messages ADD COLUMN first_token_ms INTEGER;
ALTER TABLE messages ADD COLUMN backend TEXT;
ALTER TABLE messages ADD COLUMN model TEXT;
