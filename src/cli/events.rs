//! `streamhub events …`: publish one event, tail a user's events, import a JSON-lines file.
//!
//! Output goes to stdout, one line per event; progress and diagnostics go to stderr.

use super::{CliResult, Connect, fail};
use crate::proto::{
    DataRecord, PublishUserEventRequest, StreamUserEventsRequest, UserEvent, UserEventType,
    any_from_json, any_to_json, describe_any,
};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tonic::Code;

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub connect: Connect,
    #[command(subcommand)]
    pub command: EventsCommand,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Publish one event and print it as stored (with its sequence and timestamp).
    Publish {
        /// The user whose stream gets the event.
        #[arg(long)]
        user: String,
        /// login, logout, profile_update or password_change.
        #[arg(long = "type", value_parser = parse_type)]
        event_type: UserEventType,
        /// Event data as JSON; sent as a google.protobuf.Value inside the Any.
        #[arg(long)]
        data: Option<String>,
        /// Idempotency id: publishing the same id again returns the stored event.
        #[arg(long)]
        id: Option<String>,
        /// Print JSON instead of a line for people.
        #[arg(long)]
        json: bool,
    },
    /// Print a user's events, then keep following new ones until Ctrl-C.
    ///
    /// Reconnects by itself after the server restarts, resuming after the last event it printed.
    Tail {
        #[arg(long)]
        user: String,
        /// Start after this sequence.
        #[arg(long, conflicts_with = "since")]
        from_seq: Option<u64>,
        /// Start at the first event at or after this time (RFC 3339, e.g. 2026-11-26T08:00:00Z).
        #[arg(long)]
        since: Option<String>,
        /// Only these types (comma separated).
        #[arg(long, value_delimiter = ',', value_parser = parse_type)]
        types: Vec<UserEventType>,
        /// Stop after the last event that exists now.
        #[arg(long)]
        history_only: bool,
        /// Print JSON lines instead of lines for people.
        #[arg(long)]
        json: bool,
    },
    /// Import a JSON-lines file atomically with ProcessDataBatch.
    ///
    /// Each line is an object: {"id": "...", "user_id": "...", "type": "login", "data": {...}};
    /// `id` and `data` are optional. Nothing is committed unless the whole file was sent.
    Import {
        file: PathBuf,
        /// Hide the progress bar.
        #[arg(long)]
        quiet: bool,
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

/// One event as a JSON object.
pub fn event_json(event: &UserEvent) -> serde_json::Value {
    let data = any_to_json(event.data.as_ref());
    serde_json::json!({
        "sequence": event.sequence,
        "id": event.id,
        "user_id": event.user_id,
        "type": UserEventType::try_from(event.r#type).map(|t| t.short_name()).unwrap_or("unknown"),
        "timestamp": event.timestamp.as_ref().map(ToString::to_string),
        "data": data,
    })
}

fn print_event(event: &UserEvent, json: bool) {
    if json {
        println!("{}", event_json(event));
    } else {
        println!("{}", format_event(event));
    }
}

fn parse_json(text: &str, what: &str) -> CliResult<serde_json::Value> {
    serde_json::from_str(text).map_err(|e| fail(format!("{what} is not valid JSON: {e}")))
}

pub async fn run(args: EventsArgs) -> CliResult<()> {
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
            let mut client = args.connect.client().await?;
            let event = client
                .publish_user_event(PublishUserEventRequest {
                    user_id: user,
                    r#type: event_type as i32,
                    data,
                    id: id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_event(&event, json);
            Ok(())
        }
        EventsCommand::Tail {
            user,
            from_seq,
            since,
            types,
            history_only,
            json,
        } => {
            let start_time = since
                .map(|s| {
                    prost_types::Timestamp::from_str(&s)
                        .map_err(|e| fail(format!("--since {s:?} is not RFC 3339: {e}")))
                })
                .transpose()?;
            let request = StreamUserEventsRequest {
                user_id: user,
                event_types: types.into_iter().map(|t| t as i32).collect(),
                start_time,
                after_sequence: from_seq.unwrap_or(0),
                history_only,
            };
            tokio::select! {
                result = tail(&args.connect, request, json) => result,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        EventsCommand::Import { file, quiet } => import(&args.connect, file, quiet).await,
    }
}

/// Follows a stream, reconnecting after UNAVAILABLE or a lost connection and resuming after the
/// last printed sequence, so nothing is printed twice or skipped.
async fn tail(
    connect: &Connect,
    mut request: StreamUserEventsRequest,
    json: bool,
) -> CliResult<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = async {
            let mut client = connect.client().await?;
            let mut stream = client
                .stream_user_events(request.clone())
                .await?
                .into_inner();
            while let Some(event) = stream.message().await? {
                print_event(&event, json);
                // Resume point for a reconnect: after this event, whatever filter applies.
                request.after_sequence = event.sequence;
                request.start_time = None;
            }
            CliResult::Ok(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(err) if request.history_only => return Err(err),
            Err(err) => {
                let retryable = err.0.starts_with(&format!("{:?}", Code::Unavailable))
                    || err.0.starts_with("cannot reach")
                    || err.0.starts_with(&format!("{:?}", Code::Unknown));
                if !retryable {
                    return Err(err);
                }
                eprintln!("connection lost ({err}); reconnecting in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn import(connect: &Connect, path: PathBuf, quiet: bool) -> CliResult<()> {
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

    let (tx, rx) = tokio::sync::mpsc::channel::<DataRecord>(1024);
    let reader_progress = progress.clone();
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(file).lines();
        let mut line_no = 0u64;
        while let Some(line) = lines.next_line().await? {
            line_no += 1;
            reader_progress.inc(line.len() as u64 + 1);
            if line.trim().is_empty() {
                continue;
            }
            let record =
                record_from_line(&line).map_err(|e| fail(format!("line {line_no}: {e}")))?;
            if tx.send(record).await.is_err() {
                break; // The call failed; its error is reported below.
            }
            if line_no.is_multiple_of(10_000) {
                reader_progress.set_message(format!("{line_no} records"));
            }
        }
        CliResult::Ok(line_no)
    });

    let mut client = connect.client().await?;
    let call = client.process_data_batch(tokio_stream::wrappers::ReceiverStream::new(rx));
    let result = call.await;
    // A bad line ends the reader first; then the call was cancelled and nothing committed.
    let lines = reader
        .await
        .map_err(|e| fail(format!("reader task failed: {e}")))??;
    let result = result?.into_inner();
    progress.finish_and_clear();
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
    Ok(())
}

/// Parses one JSON line into a record.
fn record_from_line(line: &str) -> Result<DataRecord, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let object = value.as_object().ok_or("expected a JSON object")?;
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
