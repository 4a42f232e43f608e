//! `streamhub notify …`: send a notification, tail a user's inbox, acknowledge it.
//!
//! Output goes to stdout, one line per notification; diagnostics go to stderr. Like every client
//! command it talks to the server only through the generated gRPC client.

use super::{CliResult, Connect, fail};
use crate::proto::{
    AcknowledgeNotificationsRequest, Notification, PublishNotificationRequest, SubscribeRequest,
    any_from_json, any_to_json, describe_any,
};
use clap::{Args, Subcommand};
use std::time::Duration;
use tonic::Code;

#[derive(Debug, Args)]
pub struct NotifyArgs {
    #[command(flatten)]
    pub connect: Connect,
    #[command(subcommand)]
    pub command: NotifyCommand,
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send one notification to a user and print it as stored (with its sequence and time).
    Send {
        /// The recipient.
        #[arg(long)]
        user: String,
        /// A short name: 1–64 bytes of ASCII letters, digits and . _ - : /
        #[arg(long)]
        topic: String,
        #[arg(long, default_value = "")]
        title: String,
        #[arg(long, default_value = "")]
        body: String,
        /// Extra data as JSON; sent as a google.protobuf.Value inside the Any.
        #[arg(long)]
        data: Option<String>,
        /// Idempotency id: sending the same id again returns the stored notification.
        #[arg(long)]
        id: Option<String>,
        /// Print JSON instead of a line for people.
        #[arg(long)]
        json: bool,
    },
    /// Print a user's unacknowledged notifications, then keep following new ones until Ctrl-C.
    ///
    /// Reconnects by itself after the server restarts, resuming after the last notification it
    /// printed. It does not acknowledge anything: use `notify ack` for that.
    Tail {
        #[arg(long)]
        user: String,
        /// Only these topics (comma separated); all topics when absent.
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
        /// Start after this sequence, or after the acknowledged cursor when that is further.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Print JSON lines instead of lines for people.
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge a user's notifications up to and including a sequence, and print the cursor.
    ///
    /// The cursor never moves back: acknowledging less than it already is changes nothing.
    /// `--through 0` only prints the cursor. A sequence past the user's last notification is
    /// refused (OUT_OF_RANGE).
    Ack {
        #[arg(long)]
        user: String,
        #[arg(long)]
        through: u64,
    },
}

/// One notification as a line for people.
pub fn format_notification(n: &Notification) -> String {
    let time = n
        .timestamp
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let data = n.data.as_ref().map(describe_any).unwrap_or_default();
    format!(
        "#{seq:<6} {time} {user} [{topic}] {title:?} {body:?} {id} {data}",
        seq = n.sequence,
        user = n.user_id,
        topic = n.topic,
        title = n.title,
        body = n.body,
        id = n.id
    )
    .trim_end()
    .to_string()
}

/// One notification as a JSON object.
pub fn notification_json(n: &Notification) -> serde_json::Value {
    let data = any_to_json(n.data.as_ref());
    serde_json::json!({
        "sequence": n.sequence,
        "id": n.id,
        "user_id": n.user_id,
        "topic": n.topic,
        "title": n.title,
        "body": n.body,
        "timestamp": n.timestamp.as_ref().map(ToString::to_string),
        "data": data,
    })
}

fn print_notification(n: &Notification, json: bool) {
    if json {
        println!("{}", notification_json(n));
    } else {
        println!("{}", format_notification(n));
    }
}

pub async fn run(args: NotifyArgs) -> CliResult<()> {
    match args.command {
        NotifyCommand::Send {
            user,
            topic,
            title,
            body,
            data,
            id,
            json,
        } => {
            let data = data
                .map(|d| {
                    serde_json::from_str::<serde_json::Value>(&d)
                        .map(|j| any_from_json(&j))
                        .map_err(|e| fail(format!("--data is not valid JSON: {e}")))
                })
                .transpose()?;
            let mut client = args.connect.client().await?;
            let notification = client
                .publish_notification(PublishNotificationRequest {
                    user_id: user,
                    topic,
                    title,
                    body,
                    data,
                    id: id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_notification(&notification, json);
            Ok(())
        }
        NotifyCommand::Tail {
            user,
            topics,
            after,
            json,
        } => {
            let request = SubscribeRequest {
                user_id: user,
                topics,
                after_sequence: after,
            };
            tokio::select! {
                result = tail(&args.connect, request, json) => result,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        NotifyCommand::Ack { user, through } => {
            let mut client = args.connect.client().await?;
            let response = client
                .acknowledge_notifications(AcknowledgeNotificationsRequest {
                    user_id: user.clone(),
                    up_to_sequence: through,
                })
                .await?
                .into_inner();
            println!(
                "{user}: acknowledged through #{}",
                response.acknowledged_through
            );
            Ok(())
        }
    }
}

/// Follows an inbox, reconnecting after UNAVAILABLE or a lost connection and resuming after the
/// last printed sequence, so nothing is printed twice or skipped.
async fn tail(connect: &Connect, mut request: SubscribeRequest, json: bool) -> CliResult<()> {
    let mut backoff = Duration::from_millis(200);
    loop {
        let attempt = async {
            let mut client = connect.client().await?;
            let mut stream = client
                .subscribe_to_notifications(request.clone())
                .await?
                .into_inner();
            while let Some(notification) = stream.message().await? {
                print_notification(&notification, json);
                // Resume point for a reconnect: after this one, whatever the topic filter.
                request.after_sequence = notification.sequence;
                backoff = Duration::from_millis(200);
            }
            CliResult::Ok(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
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
