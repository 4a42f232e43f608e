//! `streamhub chat`: join a chat room from a terminal or a pipe; `streamhub chat history`: read a
//! page of a room's past.
//!
//! The interactive client holds one bidirectional Chat call at a time. It prints every message
//! the room delivers (the replay, then live ones, its own included: that copy is the server's
//! acknowledgement) and sends each input line as a TEXT message with a fresh client id. When the
//! connection drops it reconnects with backoff and rejoins with the last sequence it printed, so
//! it neither misses nor repeats a message; lines not yet acknowledged are re-sent with their
//! original ids, which the server stores at most once. It keeps nothing on disk and trusts no
//! acknowledgement but the room's own copy of a message.
//!
//! Room messages go to stdout, one line each; typing notices, connection notes and hints go to
//! stderr.

use super::{CliError, CliResult, Connect, fail};
use crate::proto::{ChatMessage, ChatMessageType, GetChatHistoryRequest};
use clap::{Args, Subcommand};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use tonic::{Code, Status, Streaming};

/// Lines sent (or queued while disconnected) whose copy has not come back yet. Past this the
/// client stops reading stdin until the server catches up, so a fast pipe cannot grow memory.
const MAX_PENDING: usize = 256;
/// Messages waiting in the call's outbound channel: every pending line, a rejoin's first
/// message, and room for a few typing notices (those are dropped, never waited for, when full).
const OUTBOUND_CAPACITY: usize = MAX_PENDING + 16;
/// How long another member counts as typing after its last typing notice.
const TYPING_SHOWN_FOR: Duration = Duration::from_secs(5);
/// The server's default content limit. Longer lines are refused here, because the server would
/// end the whole session over one of them.
const MAX_LINE_BYTES: usize = 16 * 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a (re)join may take before the attempt counts as failed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

const COMMANDS_HELP: &str = "\
Type a line and press Enter to send it. Commands:
  /typing   tell the others you are typing (shown for about 5 s, or until your next message)
  /quit     leave the room (Ctrl-C or Ctrl-D do the same)
  /help     this text
Start a line with // to send a message that begins with a single /.";

/// `streamhub chat …`.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_long_help = "\
While joined, each line you type is sent as a message. Commands:
  /typing   tell the others you are typing
  /quit     leave the room (Ctrl-C, or Ctrl-D on a terminal, do the same)
  /help     list the commands
  //text    send \"/text\"

Output: every room message on stdout as `[sequence] HH:MM:SS user: text` (UTC), notices from
the server as `[sequence] HH:MM:SS -- User x joined the chat`. Others' typing notices and
connection notes go to stderr.

Examples:
  streamhub chat --room lobby --user ann
  printf 'hello\\nbye\\n' | streamhub chat --room lobby --user bot --exit-after-send
  streamhub chat history --room lobby --limit 20"
)]
pub struct ChatArgs {
    #[command(subcommand)]
    pub command: Option<ChatCommand>,
    /// The room to join.
    #[arg(long, required = true)]
    pub room: Option<String>,
    /// Who you are in the room.
    #[arg(long, required = true)]
    pub user: Option<String>,
    /// Replay the room after this sequence (the last one you saw) instead of its latest
    /// messages.
    #[arg(long, value_name = "SEQUENCE")]
    pub after: Option<u64>,
    /// Leave as soon as stdin ends and every line has been stored (for scripts). Without it,
    /// a piped stdin's end only stops the sending: the room keeps printing until Ctrl-C. The
    /// exit status is 1 when a line was refused (not sent).
    #[arg(long)]
    pub exit_after_send: bool,
    /// Print each room message as one line of proto3 JSON (a ChatMessage) instead of
    /// `[sequence] HH:MM:SS user: text`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ChatCommand {
    /// Print one page of a room's messages, oldest first, and whether older ones exist.
    History {
        /// The room to read.
        #[arg(long)]
        room: String,
        /// Only messages before this sequence (default: up to the newest).
        #[arg(long, value_name = "SEQUENCE")]
        before: Option<u64>,
        /// Messages in the page (at most 500).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// Print the page as proto3 JSON (a GetChatHistoryResponse, as grpcurl prints it).
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(connect: &Connect, args: ChatArgs) -> CliResult<()> {
    match args.command {
        Some(ChatCommand::History {
            room,
            before,
            limit,
            json,
        }) => history(connect, room, before, limit, json).await,
        None => {
            let (Some(room), Some(user)) = (args.room, args.user) else {
                return Err(fail("--room and --user are required"));
            };
            Interactive {
                connect: connect.clone(),
                state: RoomState::new(room, user, args.after.unwrap_or(0)),
                style: Style::detect(),
                exit_after_send: args.exit_after_send,
                json: args.json,
                refused: 0,
            }
            .run()
            .await
        }
    }
}

async fn history(
    connect: &Connect,
    room: String,
    before: Option<u64>,
    limit: u32,
    json: bool,
) -> CliResult<()> {
    let mut client = connect.client().await?;
    let page = client
        .get_chat_history(GetChatHistoryRequest {
            room_id: room.clone(),
            before_sequence: before.unwrap_or(0),
            limit,
        })
        .await?
        .into_inner();
    if json {
        return super::json::print(&page);
    }
    let style = Style::detect();
    let mut out = std::io::stdout().lock();
    for message in &page.messages {
        writeln!(out, "{}", style.message(message))?;
    }
    out.flush()?;
    match page.messages.first() {
        Some(first) if page.has_more => eprintln!(
            "(older messages exist: streamhub chat history --room {room:?} --before {})",
            first.sequence
        ),
        Some(_) => eprintln!("(this is the beginning of the room)"),
        None => eprintln!("(no messages)"),
    }
    Ok(())
}

// ------------------------------------------------------------------------------ room state

/// What the client knows of its room: the last sequence it printed, the lines the server has
/// not acknowledged yet, and who is typing. No I/O, so the resume rules are testable alone.
#[derive(Debug)]
pub(crate) struct RoomState {
    room: String,
    user: String,
    /// The last room sequence shown: the resume point of a rejoin.
    last_seen: u64,
    /// Lines sent or queued whose copy has not come back, in the order they were typed.
    pending: VecDeque<ChatMessage>,
    /// Other members shown as typing, until when.
    typing: HashMap<String, Instant>,
}

/// What to do with one message from the server.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Shown {
    /// A room message for stdout.
    Message(ChatMessage),
    /// "… user is typing" for stderr.
    Typing(String),
    Nothing,
}

impl RoomState {
    pub(crate) fn new(room: String, user: String, last_seen: u64) -> Self {
        RoomState {
            room,
            user,
            last_seen,
            pending: VecDeque::new(),
            typing: HashMap::new(),
        }
    }

    /// The first message of a call: joins, asking for everything after the last sequence seen.
    pub(crate) fn join_message(&self) -> ChatMessage {
        ChatMessage {
            room_id: self.room.clone(),
            user_id: self.user.clone(),
            sequence: self.last_seen,
            ..Default::default()
        }
    }

    /// A new line to send, with a fresh id; it stays pending until its copy comes back.
    pub(crate) fn post(&mut self, content: String) -> ChatMessage {
        let message = ChatMessage {
            id: uuid::Uuid::new_v4().to_string(),
            room_id: self.room.clone(),
            user_id: self.user.clone(),
            content,
            r#type: ChatMessageType::Text as i32,
            ..Default::default()
        };
        self.pending.push_back(message.clone());
        message
    }

    pub(crate) fn typing_message(&self) -> ChatMessage {
        ChatMessage {
            room_id: self.room.clone(),
            user_id: self.user.clone(),
            content: "typing".into(),
            r#type: ChatMessageType::Typing as i32,
            ..Default::default()
        }
    }

    /// Lines to send again after a rejoin, with their original ids.
    pub(crate) fn pending(&self) -> impl Iterator<Item = &ChatMessage> {
        self.pending.iter()
    }

    /// Takes in one message from the server.
    pub(crate) fn receive(&mut self, message: ChatMessage, now: Instant) -> Shown {
        if message.r#type == ChatMessageType::Typing as i32 {
            if message.user_id == self.user {
                return Shown::Nothing; // The same user in another window.
            }
            if message.content.is_empty() {
                self.typing.remove(&message.user_id); // "Stopped typing".
                return Shown::Nothing;
            }
            let already = self
                .typing
                .insert(message.user_id.clone(), now + TYPING_SHOWN_FOR)
                .is_some_and(|until| until > now);
            return if already {
                Shown::Nothing
            } else {
                Shown::Typing(format!("… {} is typing", message.user_id))
            };
        }
        // Stored messages arrive in room order from the resume point on; anything at or before
        // it was shown already.
        if message.sequence <= self.last_seen {
            return Shown::Nothing;
        }
        self.last_seen = message.sequence;
        if message.r#type != ChatMessageType::System as i32 {
            // A message ends its author's typing notice.
            self.typing.remove(&message.user_id);
        }
        if message.user_id == self.user && !message.id.is_empty() {
            self.pending.retain(|p| p.id != message.id);
        }
        Shown::Message(message)
    }
}

/// One input line, read as a command or a message.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Send(String),
    Typing,
    Quit,
    Help,
    Blank,
    Unknown(String),
}

fn parse_line(line: &str) -> Line {
    if let Some(rest) = line.strip_prefix("//") {
        return Line::Send(format!("/{rest}"));
    }
    if let Some(command) = line.strip_prefix('/') {
        return match command.trim() {
            "quit" | "exit" | "q" => Line::Quit,
            "typing" => Line::Typing,
            "help" | "?" => Line::Help,
            other => Line::Unknown(other.to_string()),
        };
    }
    if line.trim().is_empty() {
        Line::Blank
    } else {
        Line::Send(line.to_string())
    }
}

// ------------------------------------------------------------------------------ formatting

/// ANSI styling, only when writing to a terminal and NO_COLOR is not set.
#[derive(Debug, Clone, Copy)]
struct Style {
    stdout: bool,
    stderr: bool,
}

impl Style {
    fn detect() -> Self {
        let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Style {
            stdout: color && std::io::stdout().is_terminal(),
            stderr: color && std::io::stderr().is_terminal(),
        }
    }

    fn message(&self, message: &ChatMessage) -> String {
        let line = format_message(message);
        if self.stdout && message.r#type == ChatMessageType::System as i32 {
            format!("\x1b[2m{line}\x1b[0m")
        } else {
            line
        }
    }

    fn note(&self, text: &str) -> String {
        if self.stderr {
            format!("\x1b[2;3m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
}

/// `[seq] HH:MM:SS user: text`; server notices as `[seq] HH:MM:SS -- text`.
pub(crate) fn format_message(message: &ChatMessage) -> String {
    let time = clock(message.timestamp.as_ref());
    let content = printable(&message.content);
    let seq = message.sequence;
    let user = printable(&message.user_id);
    match ChatMessageType::try_from(message.r#type) {
        Ok(ChatMessageType::System) => format!("[{seq}] {time} -- {content}"),
        Ok(ChatMessageType::Image) => format!("[{seq}] {time} {user} [image]: {content}"),
        Ok(ChatMessageType::File) => format!("[{seq}] {time} {user} [file]: {content}"),
        _ => format!("[{seq}] {time} {user}: {content}"),
    }
}

/// The time of day in UTC, `HH:MM:SS`.
fn clock(timestamp: Option<&prost_types::Timestamp>) -> String {
    let Some(ts) = timestamp else {
        return "--:--:--".into();
    };
    let of_day = ts.seconds.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Text from other people, made safe for a terminal: control characters (escape sequences
/// could rewrite the screen) become `\u{..}`, and a line break continues indented.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\n    "),
            '\t' => out.push('\t'),
            c if c.is_control() => out.push_str(&c.escape_unicode().to_string()),
            c => out.push(c),
        }
    }
    out
}

// ------------------------------------------------------------------------------ the session

/// Why a call ended, or could not start.
#[derive(Debug)]
enum Failure {
    /// The connection or the server went away: reconnect and rejoin.
    Retry(String),
    /// Something reconnecting cannot fix.
    Fatal(CliError),
}

fn classify(status: Status) -> Failure {
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => {
            Failure::Retry(format!("{:?}: {}", status.code(), status.message()))
        }
        _ => Failure::Fatal(status.into()),
    }
}

/// One line of stdin, read on a plain thread.
enum Input {
    Line(String),
    End,
    Failed(String),
}

/// Reads stdin on its own OS thread: a blocking read cannot be cancelled, and on tokio's
/// blocking pool it would keep the runtime (and so the process) from exiting after Ctrl-C.
fn read_stdin() -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buffer = Vec::new();
        loop {
            buffer.clear();
            let input = match stdin.read_until(b'\n', &mut buffer) {
                Ok(0) => Input::End,
                Ok(_) => {
                    while buffer.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buffer.pop();
                    }
                    Input::Line(String::from_utf8_lossy(&buffer).into_owned())
                }
                Err(e) => Input::Failed(e.to_string()),
            };
            let last = !matches!(input, Input::Line(_));
            if tx.blocking_send(input).is_err() || last {
                break;
            }
        }
    });
    rx
}

/// Ctrl-C and SIGTERM, each time they arrive.
fn leave_signals() -> mpsc::Receiver<()> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            crate::server::shutdown_signal().await;
            if tx.send(()).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// The connection's endpoint (TLS included) with HTTP/2 keepalive, so a silently dead
/// connection is noticed and rejoined.
fn endpoint(connect: &Connect) -> Result<Endpoint, Failure> {
    Ok(connect
        .endpoint()
        .map_err(Failure::Fatal)?
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

struct Interactive {
    connect: Connect,
    state: RoomState,
    style: Style,
    exit_after_send: bool,
    json: bool,
    /// Lines refused here (too long), so never sent.
    refused: usize,
}

/// What the person at the keyboard (or the pipe) asked for so far.
struct Intent {
    stdin_open: bool,
    /// Leave at stdin's end: on a terminal (Ctrl-D), or with --exit-after-send.
    leave_at_end: bool,
    /// Leaving: the call is half-closed (or will be, right after a rejoin delivers the
    /// pending lines) and ends after this member's own leave notice.
    leaving: bool,
}

type Joined = (mpsc::Sender<ChatMessage>, Streaming<ChatMessage>);

impl Interactive {
    async fn run(mut self) -> CliResult<()> {
        let mut input = read_stdin();
        let mut signals = leave_signals();
        let mut intent = Intent {
            stdin_open: true,
            leave_at_end: self.exit_after_send || std::io::stdin().is_terminal(),
            leaving: false,
        };
        let mut backoff = FIRST_BACKOFF;
        let mut joined_before = false;
        loop {
            if intent.leaving && self.state.pending.is_empty() {
                // Lost the connection while leaving, with nothing left to deliver.
                return Ok(());
            }
            let attempt = tokio::select! {
                attempt = self.join() => attempt,
                _ = signals.recv() => return self.give_up(),
            };
            let (failure, was_joined) = match attempt {
                Ok((tx, inbound)) => {
                    if joined_before {
                        eprintln!(
                            "{}",
                            self.style.note(&format!(
                                "rejoined {} after #{}{}",
                                self.state.room,
                                self.state.last_seen,
                                match self.state.pending.len() {
                                    0 => String::new(),
                                    n => format!("; re-sent {n} unacknowledged message(s)"),
                                }
                            ))
                        );
                    }
                    joined_before = true;
                    backoff = FIRST_BACKOFF;
                    match self
                        .session(tx, inbound, &mut input, &mut signals, &mut intent)
                        .await
                    {
                        Ok(()) => return self.unsent(),
                        Err(failure) => (failure, true),
                    }
                }
                Err(failure) => (failure, false),
            };
            match failure {
                // The first connection fails fast: the server is probably not running at all.
                Failure::Retry(why) if !joined_before => return Err(fail(why)),
                Failure::Retry(why) => {
                    let what = if was_joined {
                        "connection lost"
                    } else {
                        "cannot rejoin yet"
                    };
                    eprintln!(
                        "{}",
                        self.style
                            .note(&format!("{what} ({why}); retrying in {backoff:?}"))
                    );
                    self.wait(backoff, &mut input, &mut signals, &mut intent)
                        .await?;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Failure::Fatal(e) => return Err(self.with_unsent(e)),
            }
        }
    }

    /// Opens a call, joins after the last sequence seen and queues the pending lines again.
    async fn join(&self) -> Result<Joined, Failure> {
        let attempt = async {
            let channel = endpoint(&self.connect)?.connect().await.map_err(|e| {
                Failure::Retry(
                    self.connect
                        .unreachable(&crate::error::cause_chain(&e))
                        .to_string(),
                )
            })?;
            let mut client = self.connect.client_on(channel).map_err(Failure::Fatal)?;
            let (tx, rx) = mpsc::channel(OUTBOUND_CAPACITY);
            let first = std::iter::once(self.state.join_message());
            for message in first.chain(self.state.pending().cloned()) {
                // Never full: pending is capped below the channel's capacity.
                let _ = tx.try_send(message);
            }
            let inbound = client
                .chat(ReceiverStream::new(rx))
                .await
                .map_err(|status| match status.code() {
                    Code::OutOfRange => Failure::Fatal(fail(format!(
                        "the room {:?} has fewer messages than the #{} this client saw \
                         (the server lost data, or --after is too high): {}",
                        self.state.room,
                        self.state.last_seen,
                        status.message()
                    ))),
                    _ => classify(status),
                })?
                .into_inner();
            Ok((tx, inbound))
        };
        tokio::time::timeout(JOIN_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(Failure::Retry(format!(
                    "no answer to the join within {JOIN_TIMEOUT:?}"
                )))
            })
    }

    /// One joined call: prints what arrives and sends what is typed until the call ends.
    async fn session(
        &mut self,
        tx: mpsc::Sender<ChatMessage>,
        mut inbound: Streaming<ChatMessage>,
        input: &mut mpsc::Receiver<Input>,
        signals: &mut mpsc::Receiver<()>,
        intent: &mut Intent,
    ) -> Result<(), Failure> {
        // Rejoined only to deliver the pending lines of a leave: half-close at once.
        let mut tx = (!intent.leaving).then_some(tx);
        loop {
            let reading =
                intent.stdin_open && !intent.leaving && self.state.pending.len() < MAX_PENDING;
            tokio::select! {
                received = inbound.message() => match received {
                    Ok(Some(message)) => self.show(message)?,
                    // The drain after a half-close ends with this member's leave notice.
                    Ok(None) if intent.leaving => return Ok(()),
                    Ok(None) => {
                        return Err(Failure::Retry("the server ended the session".into()));
                    }
                    Err(status) => return Err(classify(status)),
                },
                line = input.recv(), if reading => {
                    self.take_input(line, intent, tx.as_ref());
                    if intent.leaving {
                        tx = None; // Half-close.
                    }
                }
                _ = signals.recv() => {
                    if intent.leaving {
                        return Err(Failure::Fatal(self.leave_now()));
                    }
                    eprintln!("{}", self.style.note(&format!("leaving {}…", self.state.room)));
                    intent.leaving = true;
                    tx = None;
                }
            }
        }
    }

    /// Waits out a backoff, still taking input (queued for the rejoin).
    async fn wait(
        &mut self,
        backoff: Duration,
        input: &mut mpsc::Receiver<Input>,
        signals: &mut mpsc::Receiver<()>,
        intent: &mut Intent,
    ) -> CliResult<()> {
        let until = tokio::time::Instant::now() + backoff;
        loop {
            let reading =
                intent.stdin_open && !intent.leaving && self.state.pending.len() < MAX_PENDING;
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(()),
                line = input.recv(), if reading => self.take_input(line, intent, None),
                _ = signals.recv() => return self.give_up(),
            }
        }
    }

    /// Acts on one input line; `tx` is the open call, if any (otherwise lines wait as pending).
    fn take_input(
        &mut self,
        input: Option<Input>,
        intent: &mut Intent,
        tx: Option<&mpsc::Sender<ChatMessage>>,
    ) {
        let line = match input {
            Some(Input::Line(line)) => line,
            Some(Input::End) | None => {
                intent.stdin_open = false;
                intent.leaving |= intent.leave_at_end;
                return;
            }
            Some(Input::Failed(e)) => {
                eprintln!("cannot read stdin: {e}");
                intent.stdin_open = false;
                intent.leaving |= intent.leave_at_end;
                return;
            }
        };
        match parse_line(&line) {
            Line::Send(text) if text.len() > MAX_LINE_BYTES => {
                self.refused += 1;
                eprintln!(
                    "not sent: the line is {} bytes, over the server's default limit of \
                     {MAX_LINE_BYTES}",
                    text.len()
                );
            }
            Line::Send(text) => {
                let message = self.state.post(text);
                if let Some(tx) = tx {
                    // Never full (pending is capped); if the call is gone, the rejoin re-sends.
                    let _ = tx.try_send(message);
                }
            }
            Line::Typing => {
                if let Some(tx) = tx {
                    // A typing notice is worth nothing late: dropped rather than waited for.
                    let _ = tx.try_send(self.state.typing_message());
                }
            }
            Line::Quit => intent.leaving = true,
            Line::Help => eprintln!("{COMMANDS_HELP}"),
            Line::Blank => {}
            Line::Unknown(command) => eprintln!(
                "unknown command /{command}; /help lists the commands (start a line with // \
                 to send a leading /)"
            ),
        }
    }

    fn show(&mut self, message: ChatMessage) -> Result<(), Failure> {
        match self.state.receive(message, Instant::now()) {
            Shown::Message(message) => {
                let line = if self.json {
                    super::json::to_json(&message).map_err(Failure::Fatal)?
                } else {
                    self.style.message(&message)
                };
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}")
                    .and_then(|()| out.flush())
                    .map_err(|e| Failure::Fatal(fail(format!("cannot write to stdout: {e}"))))
            }
            Shown::Typing(note) => {
                eprintln!("{}", self.style.note(&note));
                Ok(())
            }
            Shown::Nothing => Ok(()),
        }
    }

    /// The end of a session that left cleanly: an error if a line was refused.
    fn unsent(&self) -> CliResult<()> {
        match self.refused {
            0 => Ok(()),
            n => Err(fail(format!("{n} line(s) were refused and not sent"))),
        }
    }

    /// Ctrl-C while disconnected: stop, saying what could not be sent.
    fn give_up(&self) -> CliResult<()> {
        match self.state.pending.len() {
            0 => Ok(()),
            n => Err(fail(format!(
                "left while disconnected: {n} message(s) were not sent"
            ))),
        }
    }

    /// A second Ctrl-C while leaving: stop without waiting for the leave to finish.
    fn leave_now(&self) -> CliError {
        match self.state.pending.len() {
            0 => fail("interrupted before the leave was confirmed"),
            n => fail(format!(
                "interrupted: {n} message(s) were not acknowledged by the server"
            )),
        }
    }

    fn with_unsent(&self, error: CliError) -> CliError {
        match self.state.pending.len() {
            0 => error,
            n => fail(format!(
                "{error} ({n} message(s) were not acknowledged by the server)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(seq: u64, user: &str, id: &str, kind: ChatMessageType, content: &str) -> ChatMessage {
        ChatMessage {
            id: id.into(),
            user_id: user.into(),
            room_id: "r".into(),
            content: content.into(),
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + seq as i64,
                nanos: 0,
            }),
            r#type: kind as i32,
            sequence: seq,
        }
    }

    fn typing(user: &str, content: &str) -> ChatMessage {
        ChatMessage {
            user_id: user.into(),
            room_id: "r".into(),
            content: content.into(),
            r#type: ChatMessageType::Typing as i32,
            ..Default::default()
        }
    }

    #[test]
    fn a_rejoin_resumes_after_the_last_shown_sequence_and_resends_unacknowledged_lines() {
        let mut state = RoomState::new("r".into(), "ann".into(), 0);
        assert_eq!(state.join_message().sequence, 0);
        let now = Instant::now();
        let notice = stored(
            7,
            "ann",
            "n7",
            ChatMessageType::System,
            "User ann joined the chat",
        );
        assert!(matches!(state.receive(notice, now), Shown::Message(_)));
        let first = state.post("one".into());
        let second = state.post("two".into());
        assert_ne!(first.id, second.id);
        assert_eq!(uuid::Uuid::parse_str(&first.id).map(|_| ()), Ok(()));
        // The copy of the first line is its acknowledgement.
        let echo = stored(8, "ann", &first.id, ChatMessageType::Text, "one");
        assert_eq!(
            state.receive(echo.clone(), now),
            Shown::Message(echo.clone())
        );
        let join = state.join_message();
        assert_eq!(
            (
                join.room_id.as_str(),
                join.user_id.as_str(),
                join.sequence,
                join.r#type
            ),
            ("r", "ann", 8, 0)
        );
        assert!(join.content.is_empty() && join.id.is_empty());
        let resent: Vec<_> = state.pending().cloned().collect();
        assert_eq!(resent, vec![second.clone()]);
        // A message at or before the resume point is never shown twice.
        assert_eq!(state.receive(echo, now), Shown::Nothing);
        // Another user's message with the same id does not acknowledge ours.
        let other = stored(9, "bob", &second.id, ChatMessageType::Text, "two");
        assert!(matches!(state.receive(other, now), Shown::Message(_)));
        assert_eq!(state.pending().count(), 1);
        let echo = stored(10, "ann", &second.id, ChatMessageType::Text, "two");
        assert!(matches!(state.receive(echo, now), Shown::Message(_)));
        assert_eq!(state.pending().count(), 0);
        assert_eq!(state.join_message().sequence, 10);
    }

    #[test]
    fn typing_is_shown_once_until_it_expires_or_the_typist_posts_or_stops() {
        let mut state = RoomState::new("r".into(), "ann".into(), 0);
        let t0 = Instant::now();
        let shown = Shown::Typing("… bob is typing".into());
        assert_eq!(state.receive(typing("bob", "typing"), t0), shown);
        // Refreshed by later notices, not shown again.
        let t3 = t0 + Duration::from_secs(3);
        assert_eq!(state.receive(typing("bob", "typing"), t3), Shown::Nothing);
        // Expired 5 s after the last notice.
        assert_eq!(
            state.receive(typing("bob", "typing"), t3 + Duration::from_secs(4)),
            Shown::Nothing
        );
        assert_eq!(
            state.receive(typing("bob", "typing"), t3 + Duration::from_secs(10)),
            shown
        );
        // Bob's message ends it.
        let t = t3 + Duration::from_secs(11);
        assert!(matches!(
            state.receive(stored(1, "bob", "b1", ChatMessageType::Text, "hi"), t),
            Shown::Message(_)
        ));
        assert_eq!(state.receive(typing("bob", "typing"), t), shown);
        // So does an empty notice ("stopped typing").
        assert_eq!(state.receive(typing("bob", ""), t), Shown::Nothing);
        assert_eq!(state.receive(typing("bob", "typing"), t), shown);
        // A SYSTEM notice about bob does not end it.
        let left = stored(
            2,
            "bob",
            "s2",
            ChatMessageType::System,
            "User bob left the chat",
        );
        assert!(matches!(state.receive(left, t), Shown::Message(_)));
        assert_eq!(state.receive(typing("bob", "typing"), t), Shown::Nothing);
        // Our own typing (another window) is not shown; typing never moves the resume point.
        assert_eq!(state.receive(typing("ann", "typing"), t), Shown::Nothing);
        assert_eq!(state.join_message().sequence, 2);
    }

    #[test]
    fn lines_are_commands_or_messages() {
        assert_eq!(parse_line("hello"), Line::Send("hello".into()));
        assert_eq!(parse_line("  spaced  "), Line::Send("  spaced  ".into()));
        assert_eq!(parse_line("//etc/hosts"), Line::Send("/etc/hosts".into()));
        assert_eq!(parse_line("/quit"), Line::Quit);
        assert_eq!(parse_line("/exit "), Line::Quit);
        assert_eq!(parse_line("/typing"), Line::Typing);
        assert_eq!(parse_line("/help"), Line::Help);
        assert_eq!(parse_line("/bogus x"), Line::Unknown("bogus x".into()));
        assert_eq!(parse_line(""), Line::Blank);
        assert_eq!(parse_line(" \t "), Line::Blank);
    }

    #[test]
    fn messages_print_as_one_safe_line_with_a_utc_clock() {
        let mut text = stored(12, "bob", "x", ChatMessageType::Text, "hi");
        text.timestamp = Some(prost_types::Timestamp {
            seconds: 86_400 * 20_000 + 8 * 3600 + 5 * 60 + 9,
            nanos: 5,
        });
        assert_eq!(format_message(&text), "[12] 08:05:09 bob: hi");
        let mut system = text.clone();
        system.r#type = ChatMessageType::System as i32;
        system.content = "User bob joined the chat".into();
        assert_eq!(
            format_message(&system),
            "[12] 08:05:09 -- User bob joined the chat"
        );
        let mut image = text.clone();
        image.r#type = ChatMessageType::Image as i32;
        image.content = "https://x/cat.png".into();
        assert_eq!(
            format_message(&image),
            "[12] 08:05:09 bob [image]: https://x/cat.png"
        );
        let mut hostile = text.clone();
        hostile.content = "a\x1b[2Jb\nc".into();
        hostile.timestamp = None;
        assert_eq!(
            format_message(&hostile),
            "[12] --:--:-- bob: a\\u{1b}[2Jb\n    c"
        );
    }
}
