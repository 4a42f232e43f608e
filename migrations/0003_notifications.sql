-- Each user's notification cursor: every notification of the user's `notifications` log stream
-- at or below `acknowledged_through` is acknowledged. A user without a row has acknowledged
-- nothing (0). The cursor only ever moves forward: the one statement that writes it takes the
-- larger of the stored and the new value.
CREATE TABLE notification_cursors (
    user_id              TEXT    PRIMARY KEY NOT NULL,
    acknowledged_through INTEGER NOT NULL CHECK (acknowledged_through >= 0)
) WITHOUT ROWID;
