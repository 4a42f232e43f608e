//! `streamhub streams list`: one page of ListStreams, the streams of one kind that hold records,
//! printed as key, head and the time of the last record, or as proto3 JSON.
//!
//! Results go to stdout; the hint for the next page goes to stderr, so that stdout stays the
//! listing alone. This module only asks and prints: what a valid request is (the kind, the
//! prefix, the page token) is the server's to decide, and it never opens the database.

use super::{CliResult, Connect};
use crate::proto::{ListStreamsRequest, ListStreamsResponse, StreamKind};
use clap::{Args, Subcommand, ValueEnum};

impl super::json::Proto for ListStreamsResponse {
    const NAME: &'static str = "streaming.v1.ListStreamsResponse";
}

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  streamhub streams list --kind events
  streamhub streams list --kind chat --prefix team- --limit 20
  streamhub streams list --kind collaboration --json")]
pub struct StreamsArgs {
    #[command(subcommand)]
    pub command: StreamsCommand,
}

#[derive(Debug, Subcommand)]
pub enum StreamsCommand {
    /// Print one page of the streams of a kind that hold records, ordered by key: each
    /// stream's key, head (last sequence) and the time of its last record (UTC).
    ///
    /// With auth on, this needs a service token. When more streams follow, the command to
    /// print the next page is shown on stderr.
    List {
        /// Which streams: users' events, notification inboxes, chat rooms or collaboration
        /// documents.
        #[arg(long, value_enum)]
        kind: Kind,
        /// Only keys that start with this text (taken literally: `%` and `_` are no
        /// wildcards).
        #[arg(long, value_name = "TEXT", default_value = "")]
        prefix: String,
        /// Streams in the page (at most 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Continue after the page that gave this token.
        #[arg(long, value_name = "TOKEN")]
        page_token: Option<String>,
        /// Print the page as proto3 JSON (a ListStreamsResponse, as grpcurl prints it).
        #[arg(long)]
        json: bool,
    },
}

/// A stream kind as typed on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Events,
    Notifications,
    Chat,
    #[value(alias = "collab")]
    Collaboration,
}

impl Kind {
    fn wire(self) -> StreamKind {
        match self {
            Kind::Events => StreamKind::Events,
            Kind::Notifications => StreamKind::Notifications,
            Kind::Chat => StreamKind::Chat,
            Kind::Collaboration => StreamKind::Collaboration,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Events => "events",
            Kind::Notifications => "notifications",
            Kind::Chat => "chat",
            Kind::Collaboration => "collaboration",
        }
    }
}

pub async fn run(connect: &Connect, args: StreamsArgs) -> CliResult<()> {
    match args.command {
        StreamsCommand::List {
            kind,
            prefix,
            limit,
            page_token,
            json,
        } => {
            let mut client = connect.client().await?;
            let page = client
                .list_streams(ListStreamsRequest {
                    kind: kind.wire() as i32,
                    key_prefix: prefix.clone(),
                    page_token: page_token.unwrap_or_default(),
                    limit,
                })
                .await?
                .into_inner();
            if json {
                return super::json::print(&page);
            }
            print_page(&page)?;
            if !page.next_page_token.is_empty() {
                let prefix = if prefix.is_empty() {
                    String::new()
                } else {
                    format!(" --prefix {prefix:?}")
                };
                eprintln!(
                    "(more streams: streamhub streams list --kind {}{prefix} --limit {limit} \
                     --page-token {})",
                    kind.name(),
                    page.next_page_token
                );
            }
            Ok(())
        }
    }
}

/// Key, head and last time in aligned columns under a header; keys hold no control
/// characters, so each stream is one line.
fn print_page(page: &ListStreamsResponse) -> CliResult<()> {
    if page.streams.is_empty() {
        eprintln!("(no streams)");
        return Ok(());
    }
    let key_width = page
        .streams
        .iter()
        .map(|s| s.key.chars().count())
        .max()
        .unwrap_or(0)
        .max("key".len());
    let head_width = page
        .streams
        .iter()
        .map(|s| s.head.to_string().len())
        .max()
        .unwrap_or(0)
        .max("head".len());
    super::print_line(&format!(
        "{:<key_width$}  {:>head_width$}  last record",
        "key", "head"
    ))?;
    for stream in &page.streams {
        let last = stream
            .last_timestamp
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        super::print_line(&format!(
            "{:<key_width$}  {:>head_width$}  {last}",
            stream.key, stream.head
        ))?;
    }
    Ok(())
}
