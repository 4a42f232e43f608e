//! `streamhub bench …`: load generators against a running server that print a table of
//! throughput and latency percentiles, and the server's peak RSS when given its pid.
//!
//! Benchmarks only use the public gRPC API, like any client would. They write to streams named
//! `bench-<run>-…`, so they never touch other users' data, but they do leave their data behind.

use super::{CliResult, Connect, fail};
use crate::proto::streaming_service_client::StreamingServiceClient;
use crate::proto::{DataRecord, PublishUserEventRequest, StreamUserEventsRequest, UserEventType};
use clap::{Args, Subcommand};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;
use tonic::transport::Channel;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub connect: Connect,
    /// The server's process id: its peak RSS (VmHWM) is read from /proc and reset per phase.
    #[arg(long, global = true)]
    pub pid: Option<u32>,
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// User events: append, import, replay and append→receive latency.
    Events(EventsBench),
}

/// Which phases to run, and how big each is.
#[derive(Debug, Args)]
pub struct EventsBench {
    /// Phases to run, comma separated: append, import, replay, fanout, hot.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "append,import,replay,fanout,hot"
    )]
    pub phases: Vec<String>,
    /// Concurrent PublishUserEvent callers.
    #[arg(long, default_value_t = 64)]
    pub callers: usize,
    /// Events the append phase publishes in all.
    #[arg(long, default_value_t = 200_000)]
    pub appends: u64,
    /// Events the import phase sends through ProcessDataBatch.
    #[arg(long, default_value_t = 1_000_000)]
    pub import: u64,
    /// Records per ProcessDataBatch call.
    #[arg(long, default_value_t = 250_000)]
    pub batch: u64,
    /// Bytes of data per imported event.
    #[arg(long, default_value_t = 100)]
    pub data_bytes: usize,
    /// Events in the stream that the replay phase reads with history_only.
    #[arg(long, default_value_t = 1_000_000)]
    pub replay: u64,
    /// Replay this existing user's stream instead of filling a new one (for example on a freshly
    /// restarted server, so that its peak RSS is the replay's alone).
    #[arg(long)]
    pub replay_user: Option<String>,
    /// Subscriptions in the fan-out (one per user) and hot-user (all on one user) phases.
    #[arg(long, default_value_t = 1000)]
    pub subs: usize,
    /// Appends per second in the fan-out phase, spread over the subscribed users.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Appends per second in the hot-user phase.
    #[arg(long, default_value_t = 100)]
    pub hot_rate: u64,
    /// Seconds each latency phase publishes for.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Client connections to spread calls and subscriptions over.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
}

pub async fn run(args: BenchArgs) -> CliResult<()> {
    match args.command {
        BenchCommand::Events(bench) => events(&args.connect, args.pid, bench).await,
    }
}

/// One line of the result table.
struct Row {
    figure: String,
    result: String,
    detail: String,
    peak_rss: Option<u64>,
}

/// Reads and resets a process's peak resident set size.
struct RssProbe {
    pid: Option<u32>,
}

impl RssProbe {
    fn reset(&self) {
        if let Some(pid) = self.pid {
            // "5" resets the peak RSS counter (Linux ≥ 4.0); without permission it stays cumulative.
            let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
        }
    }

    /// Peak RSS in bytes since the last reset.
    fn peak(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Data that carries its send time, so a receiver can measure append→receive latency.
fn stamped_data() -> prost_types::Any {
    prost_types::Any {
        type_url: "streamhub.bench/sent-at-nanos".into(),
        value: now_nanos().to_le_bytes().to_vec(),
    }
}

fn latency_of(data: Option<&prost_types::Any>) -> Option<Duration> {
    let bytes: [u8; 8] = data?.value.as_slice().try_into().ok()?;
    Some(Duration::from_nanos(
        now_nanos().saturating_sub(u64::from_le_bytes(bytes)),
    ))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn latency_summary(mut samples: Vec<Duration>) -> String {
    samples.sort_unstable();
    format!(
        "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        percentile(&samples, 50.0).as_secs_f64() * 1e3,
        percentile(&samples, 99.0).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    )
}

/// 1234567 → "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn rate(count: u64, elapsed: Duration) -> u64 {
    (count as f64 / elapsed.as_secs_f64().max(1e-9)) as u64
}

type Client = StreamingServiceClient<Channel>;

async fn clients(connect: &Connect, n: usize) -> CliResult<Vec<Client>> {
    let mut out = Vec::with_capacity(n.max(1));
    for _ in 0..n.max(1) {
        out.push(connect.client().await?);
    }
    Ok(out)
}

async fn events(connect: &Connect, pid: Option<u32>, bench: EventsBench) -> CliResult<()> {
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let pool = clients(connect, bench.connections).await?;
    let rss = RssProbe { pid };
    let mut rows = Vec::new();
    eprintln!("bench run {run_id} against {}", connect.server);
    for phase in &bench.phases {
        rss.reset();
        let row = match phase.as_str() {
            "append" => append_phase(&pool, run_id, &bench).await?,
            "import" => import_phase(&pool, run_id, &bench).await?,
            "replay" => replay_phase(&pool, run_id, &bench, &rss).await?,
            "fanout" => latency_phase(&pool, run_id, &bench, false).await?,
            "hot" => latency_phase(&pool, run_id, &bench, true).await?,
            other => return Err(fail(format!("unknown phase {other:?}"))),
        };
        let row = Row {
            peak_rss: rss.peak(),
            ..row
        };
        eprintln!("  {} → {} ({})", row.figure, row.result, row.detail);
        rows.push(row);
    }
    print_table(connect, pid, &rows);
    Ok(())
}

fn print_table(connect: &Connect, pid: Option<u32>, rows: &[Row]) {
    println!();
    println!(
        "streamhub bench events: server {}{}",
        connect.server,
        pid.map(|p| format!(", pid {p}")).unwrap_or_default()
    );
    let width = rows
        .iter()
        .map(|r| r.figure.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "| {:<width$} | {:>18} | {:>13} | detail",
        "figure", "result", "server peak RSS"
    );
    println!(
        "|-{}-|-{}-|-{}-|-------",
        "-".repeat(width),
        "-".repeat(18),
        "-".repeat(15)
    );
    for row in rows {
        let rss = row
            .peak_rss
            .map(|b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)))
            .unwrap_or_else(|| "n/a".into());
        println!(
            "| {:<width$} | {:>18} | {:>15} | {}",
            row.figure, row.result, rss, row.detail
        );
    }
}

/// PublishUserEvent from `callers` concurrent callers, each on its own user.
async fn append_phase(pool: &[Client], run_id: &str, bench: &EventsBench) -> CliResult<Row> {
    let remaining = Arc::new(AtomicU64::new(bench.appends));
    let start = Instant::now();
    let mut callers = JoinSet::new();
    for caller in 0..bench.callers.max(1) {
        let mut client = pool[caller % pool.len()].clone();
        let remaining = remaining.clone();
        let user = format!("bench-{run_id}-append-{caller}");
        callers.spawn(async move {
            let mut latencies = Vec::new();
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let sent = Instant::now();
                client
                    .publish_user_event(PublishUserEventRequest {
                        user_id: user.clone(),
                        r#type: UserEventType::Login as i32,
                        data: None,
                        id: String::new(),
                    })
                    .await?;
                latencies.push(sent.elapsed());
            }
            Ok::<_, tonic::Status>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(bench.appends as usize);
    while let Some(joined) = callers.join_next().await {
        latencies.extend(joined.map_err(|e| fail(e.to_string()))??);
    }
    let elapsed = start.elapsed();
    Ok(Row {
        figure: format!(
            "PublishUserEvent, {} callers, {} events",
            bench.callers,
            thousands(bench.appends)
        ),
        result: format!("{} events/s", thousands(rate(bench.appends, elapsed))),
        detail: format!("call latency {}", latency_summary(latencies)),
        peak_rss: None,
    })
}

/// Sends `count` records spread over `users` users (or one user) in batches; returns the time.
async fn import_records(
    pool: &[Client],
    users: &[String],
    id_prefix: &str,
    count: u64,
    batch: u64,
    data_bytes: usize,
) -> CliResult<Duration> {
    let start = Instant::now();
    let mut sent = 0;
    let mut calls = JoinSet::new();
    let mut next_client = 0;
    while sent < count {
        let size = batch.max(1).min(count - sent);
        let first = sent;
        let users = users.to_vec();
        let id_prefix = id_prefix.to_string();
        let payload = vec![0x5a; data_bytes];
        let records = tokio_stream::iter((first..first + size).map(move |i| DataRecord {
            id: format!("{id_prefix}-{i}"),
            user_id: users[i as usize % users.len()].clone(),
            r#type: UserEventType::ProfileUpdate as i32,
            data: Some(prost_types::Any {
                type_url: "streamhub.bench/blob".into(),
                value: payload.clone(),
            }),
        }));
        let mut client = pool[next_client % pool.len()].clone();
        next_client += 1;
        calls.spawn(async move { client.process_data_batch(records).await });
        sent += size;
        // Two batches in flight: one streaming in while the previous one commits.
        if calls.len() >= 2
            && let Some(done) = calls.join_next().await
        {
            check_batch(done, size)?;
        }
    }
    while let Some(done) = calls.join_next().await {
        check_batch(done, 0)?;
    }
    Ok(start.elapsed())
}

fn check_batch(
    done: Result<
        Result<tonic::Response<crate::proto::BatchProcessingResult>, tonic::Status>,
        tokio::task::JoinError,
    >,
    _size: u64,
) -> CliResult<()> {
    let result = done.map_err(|e| fail(e.to_string()))??.into_inner();
    if result.records_rejected > 0 || result.records_duplicate > 0 {
        return Err(fail(format!(
            "batch {} was not clean: {} rejected, {} duplicate",
            result.batch_id, result.records_rejected, result.records_duplicate
        )));
    }
    Ok(())
}

/// ProcessDataBatch of `import` events with client ids over 1,000 users.
async fn import_phase(pool: &[Client], run_id: &str, bench: &EventsBench) -> CliResult<Row> {
    let users: Vec<String> = (0..1000)
        .map(|u| format!("bench-{run_id}-import-{u}"))
        .collect();
    let elapsed = import_records(
        pool,
        &users,
        &format!("bench-{run_id}-import"),
        bench.import,
        bench.batch,
        bench.data_bytes,
    )
    .await?;
    Ok(Row {
        figure: format!(
            "ProcessDataBatch, {} events ({} B data, batches of {})",
            thousands(bench.import),
            bench.data_bytes,
            thousands(bench.batch)
        ),
        result: format!("{} events/s", thousands(rate(bench.import, elapsed))),
        detail: format!(
            "{:.2} s in all, 1,000 users, client ids",
            elapsed.as_secs_f64()
        ),
        peak_rss: None,
    })
}

/// history_only replay of one user's `replay` events to one client. The stream is filled first
/// (not timed); RSS is measured over the replay alone.
async fn replay_phase(
    pool: &[Client],
    run_id: &str,
    bench: &EventsBench,
    rss: &RssProbe,
) -> CliResult<Row> {
    let user = match &bench.replay_user {
        Some(user) => user.clone(),
        None => {
            let user = format!("bench-{run_id}-replay");
            eprintln!(
                "  filling {} events for the replay…",
                thousands(bench.replay)
            );
            import_records(
                pool,
                std::slice::from_ref(&user),
                &format!("bench-{run_id}-replay"),
                bench.replay,
                bench.batch,
                bench.data_bytes,
            )
            .await?;
            user
        }
    };
    rss.reset();
    let mut client = pool[0].clone();
    let start = Instant::now();
    let mut stream = client
        .stream_user_events(StreamUserEventsRequest {
            user_id: user,
            history_only: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut received = 0u64;
    let mut expected = 1u64;
    while let Some(event) = stream.message().await? {
        if event.sequence != expected {
            return Err(fail(format!(
                "replay out of order: got #{} after #{}",
                event.sequence,
                expected - 1
            )));
        }
        expected += 1;
        received += 1;
    }
    let elapsed = start.elapsed();
    if bench.replay_user.is_none() && received != bench.replay {
        return Err(fail(format!(
            "replay returned {received} events, expected {}",
            bench.replay
        )));
    }
    Ok(Row {
        figure: format!(
            "history_only replay, {} events, 1 client",
            thousands(received)
        ),
        result: format!("{} events/s", thousands(rate(received, elapsed))),
        detail: format!("{:.2} s, order checked", elapsed.as_secs_f64()),
        peak_rss: None,
    })
}

/// `subs` live subscriptions (one per user, or all on one hot user) while appends arrive at a
/// fixed rate; measures append→receive latency of every delivery.
async fn latency_phase(
    pool: &[Client],
    run_id: &str,
    bench: &EventsBench,
    hot: bool,
) -> CliResult<Row> {
    let label = if hot { "hot" } else { "fanout" };
    let users: Vec<String> = if hot {
        vec![format!("bench-{run_id}-hot")]
    } else {
        (0..bench.subs)
            .map(|u| format!("bench-{run_id}-fanout-{u}"))
            .collect()
    };
    let rate_per_sec = if hot { bench.hot_rate } else { bench.rate }.max(1);
    let appends = rate_per_sec * bench.seconds;
    let expected = if hot {
        appends * bench.subs as u64
    } else {
        appends
    };

    let delivered = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut subscribers = JoinSet::new();
    for s in 0..bench.subs {
        let mut client = pool[s % pool.len()].clone();
        let user = users[s % users.len()].clone();
        let mut stream = client
            .stream_user_events(StreamUserEventsRequest {
                user_id: user,
                ..Default::default()
            })
            .await?
            .into_inner();
        let delivered = delivered.clone();
        let stop = stop.clone();
        subscribers.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => break,
                    message = stream.message() => match message {
                        Ok(Some(event)) => event,
                        _ => break,
                    },
                };
                if let Some(latency) = latency_of(event.data.as_ref()) {
                    samples.push(latency);
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            samples
        });
    }
    // Let every subscription reach the live phase before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    eprintln!(
        "  {label}: {} subscriptions, {rate_per_sec} appends/s for {} s",
        bench.subs, bench.seconds
    );
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate_per_sec as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut publishes = JoinSet::new();
    for i in 0..appends {
        ticker.tick().await;
        let mut client = pool[i as usize % pool.len()].clone();
        let user = users[i as usize % users.len()].clone();
        publishes.spawn(async move {
            client
                .publish_user_event(PublishUserEventRequest {
                    user_id: user,
                    r#type: UserEventType::Login as i32,
                    data: Some(stamped_data()),
                    id: String::new(),
                })
                .await
        });
        while let Some(done) = publishes.try_join_next() {
            done.map_err(|e| fail(e.to_string()))??;
        }
    }
    while let Some(done) = publishes.join_next().await {
        done.map_err(|e| fail(e.to_string()))??;
    }
    let publish_time = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let mut samples = Vec::with_capacity(expected as usize);
    while let Some(joined) = subscribers.join_next().await {
        samples.extend(joined.map_err(|e| fail(e.to_string()))?);
    }
    samples.sort_unstable();
    let got = delivered.load(Ordering::Relaxed);
    let figure = if hot {
        format!(
            "{} subs on 1 hot user, {rate_per_sec} appends/s",
            thousands(bench.subs as u64)
        )
    } else {
        format!(
            "{} subs on {} users, {rate_per_sec} appends/s",
            thousands(bench.subs as u64),
            thousands(users.len() as u64)
        )
    };
    Ok(Row {
        figure,
        result: format!(
            "p99 {:.2} ms",
            percentile(&samples, 99.0).as_secs_f64() * 1e3
        ),
        detail: format!(
            "append→receive {}; {} of {} deliveries ({}/s) in {:.1} s",
            latency_summary(samples),
            thousands(got),
            thousands(expected),
            thousands(rate(got, publish_time)),
            publish_time.as_secs_f64()
        ),
        peak_rss: None,
    })
}
