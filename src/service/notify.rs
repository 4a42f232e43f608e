//! The notification inbox: SubscribeToNotifications, PublishNotification and
//! AcknowledgeNotifications. An inbox is the keyed log stream `(notifications, user_id)` with an
//! acknowledged cursor beside it.
//!
//! This module validates requests, turns notifications into log records and back, and asks the
//! store to move cursors. Ordering, durability and replay-then-tail belong to the log engine: it
//! must never write SQL, keep its own subscription loop, or filter differently in replay and live
//! (one view closure serves both).

use super::{ResponseStream, validate_client_id, validate_key};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::{AppendOutcome, Log, NewRecord, Start, SubscribeOptions};
use crate::proto::{self, Notification, timestamp_from_micros};
use crate::store::{LogRecord, StreamKey, StreamKind};
use prost::Message;

/// Longest topic, in bytes.
pub const MAX_TOPIC_BYTES: usize = 64;
/// Most topics one subscription may filter on.
pub const MAX_SUBSCRIBE_TOPICS: usize = 100;

/// The notification capability.
#[derive(Debug, Clone)]
pub struct Notify {
    log: Log,
    /// Largest title + body + encoded data of one notification, in bytes.
    max_bytes: usize,
}

fn stream_of(user_id: &str) -> StreamKey {
    StreamKey::new(StreamKind::Notifications, user_id)
}

/// A topic is a short machine name: 1 to 64 bytes of ASCII letters, digits and `.` `_` `-` `:`
/// `/`. Nothing that needs quoting or escaping, so topics print plainly and a comma-separated
/// list of them (as the CLI takes) is never ambiguous.
fn validate_topic(field: &str, topic: &str) -> Result<()> {
    if topic.is_empty() {
        return Err(Error::invalid(format!("{field} must not be empty")));
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(Error::invalid(format!(
            "{field} is longer than {MAX_TOPIC_BYTES} bytes"
        )));
    }
    if let Some(bad) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')))
    {
        return Err(Error::invalid(format!(
            "{field} {topic:?} contains {bad:?}; a topic is ASCII letters, digits and . _ - : /"
        )));
    }
    Ok(())
}

/// The stored body of a notification: topic, title, body and data. The id, user, sequence and
/// timestamp are the log record's own columns.
fn body(request: &proto::PublishNotificationRequest) -> Vec<u8> {
    Notification {
        topic: request.topic.clone(),
        title: request.title.clone(),
        body: request.body.clone(),
        data: request.data.clone(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Rebuilds the full notification from a log record.
pub fn notification_from_record(record: &LogRecord) -> Result<Notification> {
    let mut notification = Notification::decode(record.payload.as_slice())
        .map_err(|e| Error::Internal(format!("corrupt notification {}: {e}", record.id)))?;
    notification.id = record.id.clone();
    notification.user_id = record.stream.key.to_string();
    notification.sequence = record.sequence;
    notification.timestamp = Some(timestamp_from_micros(record.ts_micros));
    Ok(notification)
}

impl Notify {
    pub fn new(log: Log, config: &Config) -> Self {
        Notify {
            log,
            max_bytes: config.max_notification_bytes,
        }
    }

    /// Validates a notification and turns it into a record to append.
    fn new_record(&self, request: &proto::PublishNotificationRequest) -> Result<NewRecord> {
        validate_key("user_id", &request.user_id)?;
        validate_topic("topic", &request.topic)?;
        let id = validate_client_id(&request.id)?;
        let size = request.title.len()
            + request.body.len()
            + request.data.as_ref().map_or(0, Message::encoded_len);
        if size > self.max_bytes {
            return Err(Error::ResourceExhausted(format!(
                "title, body and data are {size} bytes together; the limit is {}",
                self.max_bytes
            )));
        }
        Ok(NewRecord {
            stream: stream_of(&request.user_id),
            id,
            payload: body(request),
            expect_head: None,
        })
    }

    /// SubscribeToNotifications: replays the user's notifications after the larger of
    /// `after_sequence` and the acknowledged cursor, then tails live. The topic filter is one
    /// view closure, so replay and live apply it identically.
    /// `holder` is the user whose subscription limit the stream counts against.
    pub async fn subscribe(
        &self,
        request: proto::SubscribeRequest,
        holder: Option<std::sync::Arc<str>>,
    ) -> Result<ResponseStream<Notification>> {
        validate_key("user_id", &request.user_id)?;
        if request.topics.len() > MAX_SUBSCRIBE_TOPICS {
            return Err(Error::invalid(format!(
                "topics lists {} topics; at most {MAX_SUBSCRIBE_TOPICS} are allowed",
                request.topics.len()
            )));
        }
        for topic in &request.topics {
            validate_topic("topics", topic)?;
        }
        let mut topics = request.topics;
        topics.sort_unstable();
        topics.dedup();

        let acknowledged = self.log.store.notification_cursor(&request.user_id).await?;
        // Stored sequences are SQLite integers (at most 2^63 - 1), so a larger after_sequence
        // means the same as that: nothing yet. Clamped, it never wraps into a negative bound.
        let after = request
            .after_sequence
            .max(acknowledged)
            .min(i64::MAX as u64);
        let options = SubscribeOptions {
            start: Start::AfterSequence(after),
            history_only: false,
            holder,
        };
        let view = move |record: &LogRecord| -> Result<Option<Notification>> {
            let notification = notification_from_record(record)?;
            let wanted = topics.is_empty() || topics.binary_search(&notification.topic).is_ok();
            Ok(wanted.then_some(notification))
        };
        Ok(Box::pin(crate::log::subscribe(
            &self.log,
            stream_of(&request.user_id),
            options,
            view,
        )?))
    }

    /// PublishNotification: appends one notification to the recipient's stream. A retry with the
    /// same id and content returns the stored notification; the same id with other content (or
    /// for another user) gets ALREADY_EXISTS.
    pub async fn publish(
        &self,
        request: proto::PublishNotificationRequest,
    ) -> Result<Notification> {
        let record = self.new_record(&request)?;
        let outcome = self.log.writer.append(vec![record.clone()]).await?;
        match outcome.into_iter().next() {
            Some(AppendOutcome::Stored(stored)) => notification_from_record(&stored),
            Some(AppendOutcome::Duplicate(existing)) => {
                if existing.stream == record.stream && existing.payload == record.payload {
                    notification_from_record(&existing)
                } else {
                    Err(Error::AlreadyExists(format!(
                        "notification id {} already exists with different content",
                        existing.id
                    )))
                }
            }
            Some(AppendOutcome::Rejected { .. }) | None => {
                Err(Error::Internal("unexpected append outcome".into()))
            }
        }
    }

    /// AcknowledgeNotifications: moves the user's cursor forward to `up_to_sequence` (never back)
    /// and answers where it stands. 0 acknowledges nothing and only reads the cursor. A sequence
    /// past the user's last notification gets OUT_OF_RANGE, so a client bug cannot acknowledge,
    /// and so hide, notifications that do not exist yet.
    pub async fn acknowledge(
        &self,
        request: proto::AcknowledgeNotificationsRequest,
    ) -> Result<proto::AcknowledgeNotificationsResponse> {
        validate_key("user_id", &request.user_id)?;
        let store = &self.log.store;
        let acknowledged_through = if request.up_to_sequence == 0 {
            store.notification_cursor(&request.user_id).await?
        } else {
            // A notification is committed before its publisher hears of it, so any sequence a
            // client has seen is at or below the head read here.
            let head = store.head(&stream_of(&request.user_id)).await?;
            if request.up_to_sequence > head {
                return Err(Error::OutOfRange(format!(
                    "up_to_sequence {} is past the user's last notification ({head})",
                    request.up_to_sequence
                )));
            }
            store
                .advance_notification_cursor(&request.user_id, request.up_to_sequence)
                .await?
        };
        Ok(proto::AcknowledgeNotificationsResponse {
            acknowledged_through,
        })
    }
}
