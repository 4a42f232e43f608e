//! User events: PublishUserEvent, StreamUserEvents and ProcessDataBatch.
//!
//! A user's events are the `events/<user_id>` log. This module validates requests, turns them
//! into log records and back, and leaves ordering, durability and replay-then-tail to the log
//! engine. It must never write SQL or keep its own subscription loop.

use super::{validate_client_id, validate_key};
use crate::error::{Error, Result};
use crate::log::{AppendOutcome, Log, NewRecord, Start, SubscribeOptions, Subscription};
use crate::proto::{
    BatchProcessingResult, DataRecord, PublishUserEventRequest, RecordError,
    StreamUserEventsRequest, UserEvent, UserEventType, micros_from_timestamp,
};
use crate::store::spill::Spill;
use crate::store::{LogRecord, StreamKey, StreamKind};
use crate::wire::UserEventOut;
use prost::Message;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

/// The first this many rejected records of a batch are listed in `errors`; the rest are counted.
const MAX_LISTED_ERRORS: usize = 100;

/// Limits that apply to user events.
#[derive(Debug, Clone)]
pub struct EventLimits {
    pub max_data_bytes: usize,
    pub max_batch_records: u64,
    pub max_batch_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Events {
    log: Log,
    limits: EventLimits,
}

fn stream_of(user_id: &str) -> StreamKey {
    StreamKey::new(StreamKind::Events, user_id)
}

/// The stored body of an event: its type and data. The id, user, sequence and timestamp are the
/// log record's own columns.
fn body(event_type: UserEventType, data: Option<prost_types::Any>) -> Vec<u8> {
    UserEvent {
        r#type: event_type as i32,
        data,
        ..Default::default()
    }
    .encode_to_vec()
}

/// The full event of a log record, as it goes out: the stored body is forwarded as bytes.
pub fn event_from_record(record: &LogRecord) -> UserEventOut {
    UserEventOut {
        id: record.id.clone(),
        user_id: record.stream.key.clone(),
        body: record.payload.clone(),
        ts_micros: record.ts_micros,
        sequence: record.sequence,
    }
}

fn event_type(value: i32, field: &str) -> Result<UserEventType> {
    match UserEventType::try_from(value) {
        Ok(UserEventType::Unspecified) => Err(Error::invalid(format!(
            "{field} must not be USER_EVENT_TYPE_UNSPECIFIED"
        ))),
        Ok(t) => Ok(t),
        Err(_) => Err(Error::invalid(format!("{field} has unknown value {value}"))),
    }
}

impl Events {
    pub fn new(log: Log, limits: EventLimits) -> Self {
        Events { log, limits }
    }

    /// Validates one event and turns it into a record to append.
    fn new_record(
        &self,
        id: &str,
        user_id: &str,
        event_type: i32,
        data: Option<prost_types::Any>,
    ) -> Result<NewRecord> {
        validate_key("user_id", user_id)?;
        let event_type = self::event_type(event_type, "type")?;
        let id = validate_client_id(id)?;
        if let Some(data) = &data {
            let size = data.encoded_len();
            if size > self.limits.max_data_bytes {
                return Err(Error::ResourceExhausted(format!(
                    "data is {size} bytes; the limit is {}",
                    self.limits.max_data_bytes
                )));
            }
        }
        Ok(NewRecord {
            stream: stream_of(user_id),
            id,
            payload: body(event_type, data),
            expect_head: None,
        })
    }

    /// PublishUserEvent: appends one event; a retry with the same id and content returns the
    /// stored event, the same id with other content gets ALREADY_EXISTS.
    pub async fn publish(&self, request: PublishUserEventRequest) -> Result<UserEventOut> {
        let record =
            self.new_record(&request.id, &request.user_id, request.r#type, request.data)?;
        let outcome = self.log.writer.append(vec![record.clone()]).await?;
        match outcome.into_iter().next() {
            Some(AppendOutcome::Stored(stored)) => Ok(event_from_record(&stored)),
            Some(AppendOutcome::Duplicate(existing)) => {
                if existing.stream == record.stream && existing.payload == record.payload {
                    Ok(event_from_record(&existing))
                } else {
                    Err(Error::AlreadyExists(format!(
                        "event id {} already exists with different content",
                        existing.id
                    )))
                }
            }
            Some(AppendOutcome::Rejected { .. }) | None => {
                Err(Error::Internal("unexpected append outcome".into()))
            }
        }
    }

    /// StreamUserEvents: replays from the requested point, then tails live (or ends, with
    /// `history_only`).
    /// `holder` is the user whose subscription limit the stream counts against.
    pub fn stream(
        &self,
        request: StreamUserEventsRequest,
        holder: Option<std::sync::Arc<str>>,
    ) -> Result<Subscription<UserEventOut>> {
        validate_key("user_id", &request.user_id)?;
        // Deduplicated, so a long repeated list cannot make every record's filter check slow;
        // it then holds at most one entry per event type.
        let mut wanted = Vec::new();
        for value in &request.event_types {
            let value = event_type(*value, "event_types")? as i32;
            if !wanted.contains(&value) {
                wanted.push(value);
            }
        }
        let start = if request.after_sequence > 0 {
            Start::AfterSequence(request.after_sequence)
        } else if let Some(start_time) = &request.start_time {
            // Stored timestamps are whole microseconds: a start_time inside a microsecond
            // rounds up, so no event stamped before it is returned.
            let sub_micro = start_time.nanos % 1000 != 0;
            Start::AtTime(
                micros_from_timestamp(start_time)
                    .and_then(|micros| micros.checked_add(i64::from(sub_micro)))
                    .ok_or_else(|| Error::invalid("start_time is not a valid timestamp"))?,
            )
        } else {
            Start::AfterSequence(0)
        };
        let options = SubscribeOptions {
            start,
            history_only: request.history_only,
            holder,
        };
        let view = move |record: &LogRecord| -> Result<Option<UserEventOut>> {
            let event = event_from_record(record);
            Ok((wanted.is_empty() || wanted.contains(&event.event_type())).then_some(event))
        };
        crate::log::subscribe(&self.log, stream_of(&request.user_id), options, view)
    }

    /// ProcessDataBatch: spills each valid record to a temporary file as it arrives, then, at
    /// half-close, commits them all in one transaction of their own. Memory does not grow with
    /// the batch. A client that cancels before half-closing commits nothing, and neither does a
    /// caller that sends a record for a user it may not act as (PERMISSION_DENIED); the spill
    /// goes away with the call.
    pub async fn import<S>(
        &self,
        mut records: S,
        cancelled: crate::cancel::ClientCancelled,
        identity: Option<crate::auth::Identity>,
    ) -> Result<BatchProcessingResult, Status>
    where
        S: Stream<Item = Result<DataRecord, Status>> + Unpin,
    {
        let started = std::time::Instant::now();
        let mut result = BatchProcessingResult {
            batch_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        };
        let mut bytes = 0u64;
        let mut spill = Spill::new(&self.log.spill_dir).map_err(Error::from)?;
        while let Some(record) = records.next().await {
            let mut record = record?;
            // One record for another user fails the whole batch: nothing is committed.
            crate::auth::act_as(identity.as_ref(), &mut record.user_id)?;
            let index = result.records_received;
            result.records_received += 1;
            bytes += record.encoded_len() as u64;
            if result.records_received > self.limits.max_batch_records {
                return Err(Error::ResourceExhausted(format!(
                    "a batch may hold at most {} records",
                    self.limits.max_batch_records
                ))
                .into());
            }
            if bytes > self.limits.max_batch_bytes {
                return Err(Error::ResourceExhausted(format!(
                    "a batch may hold at most {} bytes",
                    self.limits.max_batch_bytes
                ))
                .into());
            }
            match self.new_record(&record.id, &record.user_id, record.r#type, record.data) {
                Err(err) => {
                    result.records_rejected += 1;
                    if result.errors.len() < MAX_LISTED_ERRORS {
                        result.errors.push(RecordError {
                            index,
                            record_id: record.id,
                            message: err.to_string(),
                        });
                    }
                }
                // An id repeated within the batch comes back from the writer as a duplicate.
                Ok(new) => spill
                    .push(index, &new.stream.key, new.id.as_deref(), &new.payload)
                    .map_err(Error::from)?,
            }
        }
        // A client's cancel also ends the stream; only the flag tells it from a half-close.
        if cancelled.is_set() {
            return Err(Status::cancelled(
                "the batch was cancelled; nothing was committed",
            ));
        }
        let received_in = started.elapsed();
        if spill.records() > 0 {
            let spill = spill.finish().map_err(Error::from)?;
            let outcome = self.log.writer.import(StreamKind::Events, spill).await?;
            result.records_accepted = outcome.stored;
            result.records_duplicate = outcome.duplicates;
            result.records_rejected += outcome.conflicts;
            if outcome.conflicts > 0 {
                // Ids are scoped to their stream, so the existing record is this user's: the
                // same content is a retry, other content a reject (as ALREADY_EXISTS is for
                // PublishUserEvent), never a silent duplicate.
                result
                    .errors
                    .extend(
                        outcome
                            .listed_conflicts
                            .into_iter()
                            .map(|(index, record_id)| RecordError {
                                index,
                                message: format!(
                                    "event id {record_id} already exists in this user's events \
                                 with different content"
                                ),
                                record_id,
                            }),
                    );
                // Listed in batch order, the first MAX_LISTED_ERRORS of all rejects: every
                // validation reject left out above came after the ones kept.
                result.errors.sort_by_key(|e| e.index);
                result.errors.truncate(MAX_LISTED_ERRORS);
            }
        }
        tracing::info!(
            batch_id = %result.batch_id,
            received = result.records_received,
            accepted = result.records_accepted,
            duplicate = result.records_duplicate,
            rejected = result.records_rejected,
            receive_ms = received_in.as_millis() as u64,
            commit_ms = (started.elapsed() - received_in).as_millis() as u64,
            "batch imported"
        );
        Ok(result)
    }
}
