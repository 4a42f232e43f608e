//! `streamhub bench chat`: many rooms, each with many members, each member its own Chat
//! stream; messages sent at a fixed total rate; every member measures send→receive latency of
//! every message it gets, its own copy included.
//!
//! The send time travels in the message's content (nanoseconds since the epoch, then padding),
//! so a receiver needs no shared table. Every member also checks that the room's sequences reach
//! it without a gap, and the run fails if any delivery is missing. Rooms are named
//! `bench-<run>-room-<n>`, so a run never touches other rooms; the rooms stay behind.

use super::super::{CliResult, Connect, fail};
use super::{
    Client, Row, RssProbe, clients, finish_row, latency_summary, now_nanos, percentile,
    print_table, rate,
};
use crate::cli::format::thousands;
use crate::proto::{ChatMessage, ChatMessageType};
use clap::Args;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// Width of the send time at the start of each message's content.
const STAMP_DIGITS: usize = 20;
/// Messages waiting to be sent on one member's stream.
const MEMBER_QUEUE: usize = 1024;

#[derive(Debug, Args)]
pub struct ChatBench {
    /// Rooms, each with --members members.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Members per room; each is its own Chat stream.
    #[arg(long, default_value_t = 10)]
    pub members: usize,
    /// Messages per second in all, spread round-robin over the rooms and, within a room, over
    /// its members.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Client connections to spread the members' streams over.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
    /// Bytes of content per message (at least the 20-digit send time).
    #[arg(long, default_value_t = 64)]
    pub content_bytes: usize,
    /// Seconds to wait, after the last send, for the last deliveries.
    #[arg(long, default_value_t = 15)]
    pub drain_seconds: u64,
}

/// What one member saw during the measured phase.
struct MemberReport {
    samples: Vec<Duration>,
    /// Sequences that did not follow the previous one, as (expected, got).
    gaps: Vec<(u64, u64)>,
    /// Why the stream ended early, if it did.
    error: Option<String>,
}

pub async fn run(connect: &Connect, pid: Option<u32>, bench: ChatBench) -> CliResult<()> {
    if bench.rooms == 0 || bench.members == 0 || bench.rate == 0 || bench.seconds == 0 {
        return Err(fail(
            "--rooms, --members, --rate and --seconds must be at least 1",
        ));
    }
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let pool = clients(connect, bench.connections).await?;
    let rss = RssProbe { pid };
    let total_members = bench.rooms * bench.members;
    eprintln!(
        "bench run {run_id} against {}: {} rooms × {} members = {} streams",
        connect.server,
        bench.rooms,
        bench.members,
        thousands(total_members as u64)
    );

    // Join: every member's stream is live once it has seen its own join notice, and the room is
    // quiet once it has seen the last one (rooms are new, so that is sequence `members`).
    rss.reset();
    let start = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::channel(total_members);
    let mut members = JoinSet::new();
    for index in 0..total_members {
        let room = format!("bench-{run_id}-room-{}", index % bench.rooms);
        let user = format!("member-{}", index / bench.rooms);
        members.spawn(member(
            pool[index % pool.len()].clone(),
            room,
            user,
            index,
            bench.members as u64,
            ready_tx.clone(),
            delivered.clone(),
            stop.clone(),
        ));
    }
    drop(ready_tx);
    let mut senders: Vec<Option<mpsc::Sender<ChatMessage>>> = vec![None; total_members];
    let join_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for _ in 0..total_members {
        match tokio::time::timeout_at(join_deadline, ready_rx.recv()).await {
            Ok(Some((index, tx))) => senders[index] = Some(tx),
            Ok(None) => break,
            Err(_) => return Err(fail("members did not all join within 60 s")),
        }
    }
    let joined = senders.iter().filter(|s| s.is_some()).count();
    if joined < total_members {
        // A member failed before it was ready: its task says why.
        stop.cancel();
        while let Some(done) = members.join_next().await {
            if let Some(error) = done.map_err(|e| fail(e.to_string()))?.error {
                return Err(fail(format!("a member failed to join: {error}")));
            }
        }
        return Err(fail(format!(
            "only {joined} of {total_members} members joined"
        )));
    }
    let join_time = start.elapsed();
    let mut rows = vec![finish_row(
        Row {
            figure: format!(
                "join {} in {}",
                count(total_members, "member"),
                count(bench.rooms, "room")
            ),
            result: format!("{:.2} s", join_time.as_secs_f64()),
            detail: format!(
                "{} joins/s, each live after its own join notice, every join notice delivered",
                thousands(rate(total_members as u64, join_time))
            ),
            peak_rss: None,
        },
        &rss,
    )];

    // Send at the total rate: message i goes to room i % rooms, from its next member in turn.
    rss.reset();
    let messages = bench.rate * bench.seconds;
    let expected = messages * bench.members as u64;
    delivered.store(0, Ordering::Relaxed);
    eprintln!(
        "  sending {} messages at {} msg/s; {} deliveries expected",
        thousands(messages),
        thousands(bench.rate),
        thousands(expected)
    );
    let padding = "x".repeat(bench.content_bytes.saturating_sub(STAMP_DIGITS + 1));
    let start = Instant::now();
    let mut sent = 0u64;
    let tick = Duration::from_secs_f64(1.0 / bench.rate as f64).max(Duration::from_millis(1));
    while sent < messages {
        let due = ((start.elapsed().as_secs_f64() * bench.rate as f64) as u64).min(messages);
        while sent < due {
            let room = sent as usize % bench.rooms;
            let member = (sent as usize / bench.rooms) % bench.members;
            let index = member * bench.rooms + room;
            let Some(tx) = &senders[index] else {
                return Err(fail("a member's stream is gone"));
            };
            let message = ChatMessage {
                id: format!("{run_id}-{sent}"),
                content: format!("{:0width$} {padding}", now_nanos(), width = STAMP_DIGITS),
                r#type: ChatMessageType::Text as i32,
                ..Default::default()
            };
            tx.send(message)
                .await
                .map_err(|_| fail("a member's stream ended while sending"))?;
            sent += 1;
        }
        if sent < messages {
            tokio::time::sleep(tick).await;
        }
    }
    let send_time = start.elapsed();
    let drain_deadline = Instant::now() + Duration::from_secs(bench.drain_seconds);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let delivery_time = start.elapsed();
    stop.cancel();
    drop(senders);
    let mut samples = Vec::with_capacity(expected as usize);
    let mut gaps = Vec::new();
    let mut errors = Vec::new();
    while let Some(done) = members.join_next().await {
        let report = done.map_err(|e| fail(e.to_string()))?;
        samples.extend(report.samples);
        gaps.extend(report.gaps);
        errors.extend(report.error);
    }
    let got = samples.len() as u64;
    samples.sort_unstable();
    let p99 = percentile(&samples, 99.0);
    rows.push(finish_row(
        Row {
            figure: format!(
                "{} × {}, {} msg/s",
                count(bench.rooms, "room"),
                count(bench.members, "member"),
                thousands(bench.rate)
            ),
            result: format!("p99 {:.2} ms", p99.as_secs_f64() * 1e3),
            detail: format!(
                "send→receive {}; {} of {} deliveries ({}/s), {} sent in {:.1} s",
                latency_summary(samples),
                thousands(got),
                thousands(expected),
                thousands(rate(got, delivery_time)),
                thousands(sent),
                send_time.as_secs_f64()
            ),
            peak_rss: None,
        },
        &rss,
    ));
    print_table(
        &format!(
            "streamhub bench chat: server {}{}; every member gets every message of its room, \
             the sender's own copy included",
            connect.server,
            pid.map(|p| format!(", pid {p}")).unwrap_or_default()
        ),
        &rows,
    );
    if let Some(error) = errors.first() {
        return Err(fail(format!(
            "{} member stream(s) failed; the first: {error}",
            errors.len()
        )));
    }
    if !gaps.is_empty() {
        let (want, got) = gaps[0];
        return Err(fail(format!(
            "{} gap(s) in room sequences; the first: expected #{want}, got #{got}",
            gaps.len()
        )));
    }
    if got != expected {
        return Err(fail(format!(
            "lost deliveries: {} of {} arrived within {} s of the last send",
            thousands(got),
            thousands(expected),
            bench.drain_seconds
        )));
    }
    Ok(())
}

/// "1 room", "100 rooms", "1,000 members".
fn count(n: usize, noun: &str) -> String {
    let s = if n == 1 { "" } else { "s" };
    format!("{} {noun}{s}", thousands(n as u64))
}

/// One member: joins, reports ready (with the sender of its stream) once the room's joins are
/// all delivered to it, then measures every TEXT message until stopped.
#[allow(clippy::too_many_arguments)]
async fn member(
    mut client: Client,
    room: String,
    user: String,
    index: usize,
    last_join: u64,
    ready: mpsc::Sender<(usize, mpsc::Sender<ChatMessage>)>,
    delivered: Arc<AtomicU64>,
    stop: CancellationToken,
) -> MemberReport {
    let mut report = MemberReport {
        samples: Vec::new(),
        gaps: Vec::new(),
        error: None,
    };
    let (tx, rx) = mpsc::channel::<ChatMessage>(MEMBER_QUEUE);
    let join = ChatMessage {
        room_id: room,
        user_id: user,
        ..Default::default()
    };
    if tx.send(join).await.is_err() {
        report.error = Some("the outbound channel closed before the join".into());
        return report;
    }
    let mut stream = match client.chat(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            report.error = Some(format!("{:?}: {}", status.code(), status.message()));
            return report;
        }
    };
    let mut ready = Some((ready, tx));
    let mut last = 0u64;
    loop {
        let message = tokio::select! {
            _ = stop.cancelled() => break,
            received = stream.message() => match received {
                Ok(Some(message)) => message,
                Ok(None) => {
                    report.error = Some("the stream ended".into());
                    break;
                }
                Err(status) => {
                    report.error = Some(format!("{:?}: {}", status.code(), status.message()));
                    break;
                }
            },
        };
        if message.sequence == 0 {
            continue; // A typing notice: not part of the room's order.
        }
        if last != 0 && message.sequence != last + 1 {
            report.gaps.push((last + 1, message.sequence));
        }
        last = message.sequence;
        if message.r#type == ChatMessageType::Text as i32 {
            if let Some(sent) = message
                .content
                .get(..STAMP_DIGITS)
                .and_then(|digits| digits.parse::<u64>().ok())
            {
                report
                    .samples
                    .push(Duration::from_nanos(now_nanos().saturating_sub(sent)));
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        } else if last >= last_join
            && let Some((ready, tx)) = ready.take()
            && ready.send((index, tx)).await.is_err()
        {
            break;
        }
    }
    report
}
