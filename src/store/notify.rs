//! SQL for notification inboxes beside the log: each user's acknowledged cursor.
