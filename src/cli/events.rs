//! `streamhub events …`: publish one event, tail a user's events, import a JSON-lines file.
//!
//! Output goes to stdout, one line per event; progress and diagnostics go to stderr. An import
//! is all or nothing from here: a line that does not parse, or Ctrl-C, cancels the call
//! (RST_STREAM) instead of half-closing it, so the server never commits a partial file.

use super::format::{When, parse_when};
use super::json::{self, json_error};
use super::{CliResult, Client, Connect, Feed, FeedStream, fail};
use crate::proto::{
    BatchProcessingResult, DataRecord, PublishUserEventRequest, StreamUserEventsRequest, UserEvent,
    UserEventType, any_from_json, describe_any,
};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncBufReadExt;
use tonic::Code;

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(subcommand)]
    pub command: EventsCommand,
}

/// The user a command is about: `USER`, or the older `--user USER`.
#[derive(Debug, Args)]
pub struct User {
    /// The user whose stream it is.
    #[arg(value_name = "USER", required_unless_present = "user_flag")]
    pub user: Option<String>,
    /// The same as USER (the older spelling).
    #[arg(
        long = "user",
        value_name = "USER",
        conflicts_with = "user",
        hide = true
    )]
    pub user_flag: Option<String>,
}

impl User {
    pub fn id(self) -> String {
        self.user.or(self.user_flag).unwrap_or_default()
    }
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Publish one event and print it as stored (with its sequence and timestamp).
    Publish {
        #[command(flatten)]
        user: User,
        /// login, logout, profile_update or password_change.
        #[arg(long = "type", value_parser = parse_type)]
        event_type: UserEventType,
        /// Event data as JSON; sent as a google.protobuf.Value inside the Any.
        #[arg(long)]
        data: Option<String>,
        /// Idempotency id: publishing the same id again returns the stored event.
        #[arg(long)]
        id: Option<String>,
        /// Print the stored event as proto3 JSON (as grpcurl prints a UserEvent).
        #[arg(long)]
        json: bool,
    },
    /// Print a user's events, then keep following new ones until Ctrl-C.
    ///
    /// Fails at once if the server cannot be reached. Once connected, it reconnects by itself
    /// after the server restarts, resuming after the last event it printed, and says so on
    /// stderr.
    Tail {
        #[command(flatten)]
        user: User,
        /// Only events after this sequence (the last one you have); 0 means from the start.
        #[arg(
            long,
            value_name = "SEQUENCE",
            alias = "from-seq",
            conflicts_with = "since"
        )]
        after: Option<u64>,
        /// Start at the first event at or after this time: a duration ago (90s, 15m, 1h, 7d) or
        /// an RFC 3339 time (2026-11-26T08:00:00Z).
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        since: Option<When>,
        /// Only these types (comma separated).
        #[arg(long, value_delimiter = ',', value_parser = parse_type)]
        types: Vec<UserEventType>,
        /// Stop after the last event that exists now.
        #[arg(long)]
        history_only: bool,
        /// Print each event as one line of proto3 JSON (what `events import` reads back).
        #[arg(long)]
        json: bool,
    },
    /// Import a JSON-lines file atomically with ProcessDataBatch.
    ///
    /// Each line is one event: either what `events tail --json` prints (proto3 JSON of a
    /// UserEvent; its sequence and timestamp are the old stream's and are not sent), or
    /// {"id": "...", "user_id": "...", "type": "login", "data": {...}} with `id` and `data`
    /// optional. Nothing is committed unless the whole file was read and sent: a line that
    /// does not parse, or Ctrl-C, cancels the call. Exits non-zero if any record was rejected.
    Import {
        /// The JSON-lines file.
        file: PathBuf,
        /// Hide the progress bar.
        #[arg(long)]
        quiet: bool,
        /// Print the result as proto3 JSON (a BatchProcessingResult).
        #[arg(long)]
        json: bool,
    },
}

fn parse_type(name: &str) -> Result<UserEventType, String> {
    UserEventType::parse_name(name).ok_or_else(|| {
        format!("unknown event type {name:?}; use login, logout, profile_update or password_change")
    })
}

/// One event as a line for people.
pub fn format_event(event: &UserEvent) -> String {
    let time = event
        .timestamp
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let kind = UserEventType::try_from(event.r#type)
        .map(|t| t.short_name().to_string())
        .unwrap_or_else(|_| event.r#type.to_string());
    let data = event.data.as_ref().map(describe_any).unwrap_or_default();
    format!(
        "#{seq:<6} {time} {user} {kind:<15} {id} {data}",
        seq = event.sequence,
        user = event.user_id,
        id = event.id
    )
    .trim_end()
    .to_string()
}

fn print_event(event: &UserEvent, json: bool) -> CliResult<()> {
    if json {
        json::print(event)
    } else {
        super::print_line(&format_event(event))
    }
}

fn parse_json(text: &str, what: &str) -> CliResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| fail(format!("{what} is not valid JSON: {e}")))
}

pub async fn run(connect: &Connect, args: EventsArgs) -> CliResult<()> {
    match args.command {
        EventsCommand::Publish {
            user,
            event_type,
            data,
            id,
            json,
        } => {
            let data = data
                .map(|d| parse_json(&d, "--data").map(|j| any_from_json(&j)))
                .transpose()?;
            let mut client = connect.client().await?;
            let event = client
                .publish_user_event(PublishUserEventRequest {
                    user_id: user.id(),
                    r#type: event_type as i32,
                    data,
                    id: id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_event(&event, json)
        }
        EventsCommand::Tail {
            user,
            after,
            since,
            types,
            history_only,
            json,
        } => {
            let request = StreamUserEventsRequest {
                user_id: user.id(),
                event_types: types.into_iter().map(|t| t as i32).collect(),
                start_time: since.map(|when| when.timestamp(SystemTime::now())),
                after_sequence: after.unwrap_or(0),
                history_only,
            };
            tokio::select! {
                result = tail(connect, request, json) => result,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        EventsCommand::Import { file, quiet, json } => import(connect, file, quiet, json).await,
    }
}

/// Whether a failed tail attempt is worth reconnecting for: the server went away (a restart),
/// not a refusal.
pub(crate) fn lost_connection(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled)
}

/// Follows a stream. The first connection must work (else the error is returned at once);
/// after one that worked, a lost connection is retried with backoff, resuming after the last
/// printed sequence so nothing is printed twice or skipped, and each reconnect is reported on
/// stderr.
async fn tail(
    connect: &Connect,
    mut request: StreamUserEventsRequest,
    json: bool,
) -> CliResult<()> {
    let mut stream = connect
        .client()
        .await?
        .stream_user_events(request.clone())
        .await?
        .into_inner();
    loop {
        let ended = loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    print_event(&event, json)?;
                    // Resume point for a reconnect: after this event, whatever filter applies.
                    request.after_sequence = event.sequence;
                    request.start_time = None;
                }
                Ok(None) => return Ok(()),
                Err(status) => break status,
            }
        };
        if request.history_only || !lost_connection(ended.code()) {
            return Err(ended.into());
        }
        eprintln!(
            "connection lost ({:?}: {}); reconnecting",
            ended.code(),
            ended.message()
        );
        stream = reconnect(connect, |mut client| {
            let request = request.clone();
            async move { Ok(client.stream_user_events(request).await?.into_inner()) }
        })
        .await?;
        eprintln!(
            "reconnected to {}; resuming after #{}",
            connect.url()?,
            request.after_sequence
        );
    }
}

/// Retries connecting and opening a call with backoff (200 ms doubling to 5 s) until it works
/// or fails for a reason other than the server being away.
pub(crate) async fn reconnect<T, Fut>(
    connect: &Connect,
    mut open: impl FnMut(Client) -> Fut,
) -> CliResult<T>
where
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        let Ok(channel) = connect.endpoint()?.connect().await else {
            continue;
        };
        match open(connect.client_on(channel)?).await {
            Ok(opened) => return Ok(opened),
            Err(status) if lost_connection(status.code()) => continue,
            Err(status) => return Err(status.into()),
        }
    }
}

async fn import(connect: &Connect, path: PathBuf, quiet: bool, json: bool) -> CliResult<()> {
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
    let size = file.metadata().await?.len();
    let progress = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(size)
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );

    let mut client = connect.client().await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Feed<DataRecord>>(1024);
    let reader_progress = progress.clone();
    let name = path.display().to_string();
    let mut reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(file).lines();
        let mut line_no = 0u64;
        loop {
            let line = match lines.next_line().await {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => return Err(fail(format!("{name}: line {}: {e}", line_no + 1))),
            };
            line_no += 1;
            reader_progress.inc(line.len() as u64 + 1);
            if line.trim().is_empty() {
                continue;
            }
            let record = record_from_line(&line)
                .map_err(|e| fail(format!("{name}: line {line_no}: {e}")))?;
            if tx.send(Feed::Item(record)).await.is_err() {
                return Ok(line_no); // The call failed; its error is reported below.
            }
            if line_no.is_multiple_of(10_000) {
                reader_progress.set_message(format!("{line_no} records"));
            }
        }
        // Only now may the request stream end cleanly (half-close): the whole file was sent.
        let _ = tx.send(Feed::End).await;
        Ok(line_no)
    });

    let mut call = Box::pin(client.process_data_batch(FeedStream::new(rx)));
    let mut interrupted = Box::pin(tokio::signal::ctrl_c());
    let mut lines = None;
    let nothing = "; the call was cancelled and nothing was imported";
    let result = loop {
        tokio::select! {
            result = &mut call => break result,
            joined = &mut reader, if lines.is_none() => match joined {
                Ok(Ok(count)) => lines = Some(count),
                // Dropping the call cancels it (RST_STREAM); its stream never ended cleanly.
                Ok(Err(e)) => {
                    drop(call);
                    progress.finish_and_clear();
                    return Err(fail(format!("{e}{nothing}")));
                }
                Err(e) => {
                    drop(call);
                    progress.finish_and_clear();
                    return Err(fail(format!("the file reader failed: {e}{nothing}")));
                }
            },
            _ = &mut interrupted => {
                drop(call);
                reader.abort();
                progress.finish_and_clear();
                return Err(fail(format!("interrupted{nothing}")));
            }
        }
    };
    progress.finish_and_clear();
    let lines = match lines {
        Some(lines) => lines,
        // The call ended first (the server refused the batch); a bad line that raced it is
        // the better explanation.
        None => match reader.await {
            Ok(Ok(lines)) => lines,
            Ok(Err(e)) => return Err(fail(format!("{e}{nothing}"))),
            Err(e) => return Err(fail(format!("the file reader failed: {e}"))),
        },
    };
    report(result?.into_inner(), lines, json)
}

/// Prints the server's verdict; an error when any record was rejected (it was not stored).
fn report(result: BatchProcessingResult, lines: u64, json: bool) -> CliResult<()> {
    if json {
        json::print(&result)?;
    } else {
        println!(
            "batch {}: {} lines, {} received, {} accepted, {} duplicate, {} rejected",
            result.batch_id,
            lines,
            result.records_received,
            result.records_accepted,
            result.records_duplicate,
            result.records_rejected
        );
        for error in &result.errors {
            println!(
                "  rejected record {} (id {:?}): {}",
                error.index, error.record_id, error.message
            );
        }
    }
    match result.records_rejected {
        0 => Ok(()),
        n => Err(fail(format!(
            "{n} of {} records were rejected and not stored",
            result.records_received
        ))),
    }
}

/// Parses one JSON line into a record: proto3 JSON of a UserEvent (what `events tail --json`
/// prints), or the simple form {"id", "user_id", "type": "login", "data": {...}}.
fn record_from_line(line: &str) -> Result<DataRecord, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| json_error(e).to_string())?;
    let object = value.as_object().ok_or("expected a JSON object")?;
    if looks_canonical(object) {
        let event = json::from_json::<UserEvent>(line).map_err(|e| e.to_string())?;
        return Ok(DataRecord {
            id: event.id,
            user_id: event.user_id,
            r#type: event.r#type,
            // The JSON decoder encodes a Struct's fields in no fixed order.
            data: event.data.map(crate::proto::canonical_any),
        });
    }
    simple_record(object)
}

/// A line in the proto3 JSON mapping: camelCase names, the full enum name, a sequence or
/// timestamp, or data as a typed Any.
fn looks_canonical(object: &serde_json::Map<String, serde_json::Value>) -> bool {
    ["userId", "sequence", "timestamp"]
        .iter()
        .any(|key| object.contains_key(*key))
        || object
            .get("type")
            .and_then(|t| t.as_str())
            .is_some_and(|t| t.starts_with("USER_EVENT_TYPE_"))
        || object
            .get("data")
            .and_then(|d| d.as_object())
            .is_some_and(|d| d.contains_key("@type"))
}

fn simple_record(
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<DataRecord, String> {
    let text = |field: &str| -> Result<String, String> {
        match object.get(field) {
            None | Some(serde_json::Value::Null) => Ok(String::new()),
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("{field} must be a string, not {other}")),
        }
    };
    let type_name = text("type")?;
    let event_type = parse_type(&type_name)?;
    Ok(DataRecord {
        id: text("id")?,
        user_id: text("user_id")?,
        r#type: event_type as i32,
        data: object
            .get("data")
            .filter(|d| !d.is_null())
            .map(any_from_json),
    })
}
