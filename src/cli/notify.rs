//! `streamhub notify …`: send a notification, tail a user's inbox, acknowledge it.
//!
//! Output goes to stdout, one line per notification; diagnostics go to stderr. Like every client
//! command it talks to the server only through the generated gRPC client.

use super::events::{User, lost_connection, reconnect};
use super::{CliResult, Connect, fail};
use crate::proto::{
    AcknowledgeNotificationsRequest, Notification, PublishNotificationRequest, SubscribeRequest,
    any_from_json, describe_any,
};
use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct NotifyArgs {
    #[command(subcommand)]
    pub command: NotifyCommand,
}

#[derive(Debug, Subcommand)]
pub enum NotifyCommand {
    /// Send one notification to a user and print it as stored (with its sequence and time).
    Send {
        #[command(flatten)]
        user: User,
        /// A short name: 1–64 bytes of ASCII letters, digits and . _ - : /
        #[arg(long)]
        topic: String,
        /// The notification's title.
        #[arg(long, default_value = "")]
        title: String,
        /// The notification's text.
        #[arg(long, default_value = "")]
        body: String,
        /// Extra data as JSON; sent as a google.protobuf.Value inside the Any.
        #[arg(long)]
        data: Option<String>,
        /// Idempotency id: sending the same id again returns the stored notification.
        #[arg(long)]
        id: Option<String>,
        /// Print the stored notification as proto3 JSON (as grpcurl prints a Notification).
        #[arg(long)]
        json: bool,
    },
    /// Print a user's unacknowledged notifications, then keep following new ones until Ctrl-C.
    ///
    /// Fails at once if the server cannot be reached. Once connected, it reconnects by itself
    /// after the server restarts, resuming after the last notification it printed, and says so
    /// on stderr. It does not acknowledge anything: use `notify ack` for that.
    Tail {
        #[command(flatten)]
        user: User,
        /// Only these topics (comma separated); all topics when absent.
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
        /// Only notifications after this sequence, or after the acknowledged cursor when that is
        /// further; 0 means all unacknowledged ones.
        #[arg(long, value_name = "SEQUENCE", default_value_t = 0)]
        after: u64,
        /// Print each notification as one line of proto3 JSON.
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge a user's notifications up to and including a sequence, and print the cursor.
    ///
    /// The cursor never moves back: acknowledging less than it already is changes nothing.
    /// `--through 0` only prints the cursor. A sequence past the user's last notification is
    /// refused (OUT_OF_RANGE).
    Ack {
        #[command(flatten)]
        user: User,
        /// The last sequence to acknowledge (included).
        #[arg(long, value_name = "SEQUENCE", alias = "up-to")]
        through: u64,
        /// Print the answer as proto3 JSON (an AcknowledgeNotificationsResponse).
        #[arg(long)]
        json: bool,
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

fn print_notification(n: &Notification, json: bool) -> CliResult<()> {
    if json {
        super::json::print(n)
    } else {
        super::print_line(&format_notification(n))
    }
}

pub async fn run(connect: &Connect, args: NotifyArgs) -> CliResult<()> {
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
            let mut client = connect.client().await?;
            let notification = client
                .publish_notification(PublishNotificationRequest {
                    user_id: user.id(),
                    topic,
                    title,
                    body,
                    data,
                    id: id.unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_notification(&notification, json)
        }
        NotifyCommand::Tail {
            user,
            topics,
            after,
            json,
        } => {
            let request = SubscribeRequest {
                user_id: user.id(),
                topics,
                after_sequence: after,
            };
            tokio::select! {
                result = tail(connect, request, json) => result,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        NotifyCommand::Ack {
            user,
            through,
            json,
        } => {
            let user = user.id();
            let mut client = connect.client().await?;
            let response = client
                .acknowledge_notifications(AcknowledgeNotificationsRequest {
                    user_id: user.clone(),
                    up_to_sequence: through,
                })
                .await?
                .into_inner();
            if json {
                return super::json::print(&response);
            }
            println!(
                "{user}: acknowledged through #{}",
                response.acknowledged_through
            );
            Ok(())
        }
    }
}

/// Follows an inbox. The first connection must work (else the error is returned at once);
/// after one that worked, a lost connection is retried with backoff, resuming after the last
/// printed sequence so nothing is printed twice or skipped, and each reconnect is reported on
/// stderr.
async fn tail(connect: &Connect, mut request: SubscribeRequest, json: bool) -> CliResult<()> {
    let mut stream = connect
        .client()
        .await?
        .subscribe_to_notifications(request.clone())
        .await?
        .into_inner();
    loop {
        let ended = loop {
            match stream.message().await {
                Ok(Some(notification)) => {
                    print_notification(&notification, json)?;
                    // Resume point for a reconnect: after this one, whatever the topic filter.
                    request.after_sequence = notification.sequence;
                }
                Ok(None) => return Ok(()),
                Err(status) => break status,
            }
        };
        if !lost_connection(ended.code()) {
            return Err(ended.into());
        }
        eprintln!(
            "connection lost ({:?}: {}); reconnecting",
            ended.code(),
            ended.message()
        );
        stream = reconnect(connect, |mut client| {
            let request = request.clone();
            async move {
                Ok(client
                    .subscribe_to_notifications(request)
                    .await?
                    .into_inner())
            }
        })
        .await?;
        eprintln!(
            "reconnected to {}; resuming after #{}",
            connect.url()?,
            request.after_sequence
        );
    }
}
