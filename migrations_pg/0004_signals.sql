-- Ephemeral signals (typing, presence, cursors) too long for a NOTIFY payload (under 8,000
-- bytes). The sender stores the body here and notifies its row id; receivers read it within
-- seconds. Unlogged: never written to the WAL, lost on a database crash, which signals may be.
-- Rows older than a minute are deleted by any replica's periodic head check.
CREATE UNLOGGED TABLE signal_bodies (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body        TEXT   NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX signal_bodies_created ON signal_bodies (created_at);
