//! `streamhub bench …`: load generators against a running server that print a table of
//! throughput and latency percentiles, and the server's peak RSS when given its pid.
//!
//! Benchmarks only use the public gRPC API, like any client would. They write to streams named
//! `bench-<run>-…`, so they never touch other users' data, but they do leave their data behind.

mod chat;
mod live;
mod metrics;
mod notify;
mod stalled;

use super::format::thousands;
use super::{CliResult, Connect, fail};
use crate::proto::{DataRecord, PublishUserEventRequest, StreamUserEventsRequest, UserEventType};
use clap::{Args, Subcommand};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;

#[derive(Debug, Args)]
pub struct BenchArgs {
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
    /// Files: upload, download over gRPC and download over plain HTTP of one generated file.
    Files(FilesBench),
    /// Chat rooms: send→receive latency and delivered messages per second.
    Chat(chat::ChatBench),
    /// Notifications: publish→receive latency with many subscribed users.
    Notify(notify::NotifyBench),
    /// Metrics: CollectMetrics points stored per second, one stream and many.
    Metrics(metrics::MetricsBench),
    /// Live processing: ProcessLiveData round trips per second.
    Live(live::LiveBench),
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
    /// Another replica of the same deployment (same PostgreSQL database) that the fan-out and
    /// hot-user phases publish through, while they subscribe through --server: the figure is
    /// then cross-replica append→receive latency. The same TLS and token settings apply.
    #[arg(long, value_name = "URL|HOST:PORT")]
    pub publish_to: Option<String>,
    /// The server's SQLite database (its DATABASE_URL, or a path), on this machine: after the
    /// phases, the table adds the disk it takes per stored record (database file and WAL over
    /// every record in its log). Best on a server started fresh for the bench.
    #[arg(long, value_name = "SQLITE_URL|PATH")]
    pub database: Option<String>,
}

/// Which file phases to run, and on how much data.
#[derive(Debug, Args)]
pub struct FilesBench {
    /// Size of the generated file: bytes, or a number with a unit (1GiB, 512MiB, 100MB, 64KiB).
    /// The data is pseudo-random, generated on the fly: nothing is read from or written to disk.
    #[arg(long, default_value = "1GiB", value_parser = crate::cli::format::parse_size)]
    pub size: u64,
    /// Bytes per UploadFile chunk message (at most 4 MiB).
    #[arg(long, default_value = "64KiB", value_parser = crate::cli::format::parse_size)]
    pub chunk: u64,
    /// Phases to run, comma separated: upload, download (gRPC DownloadFile), http (GET of the
    /// download_url), stalled (a small round trip while many transfers stall). download and
    /// http fetch the file that upload stored in the same run; stalled needs nothing before it.
    #[arg(long, value_delimiter = ',', default_value = "upload,download,http")]
    pub phases: Vec<String>,
    /// Stalled phase: uploads that send their metadata and then nothing.
    #[arg(long, default_value_t = 600)]
    pub stalled_uploads: usize,
    /// Stalled phase: downloads of one large file that are never read.
    #[arg(long, default_value_t = 300)]
    pub stalled_downloads: usize,
    /// Stalled phase: connections the stalled transfers are spread over.
    #[arg(long, default_value_t = 4)]
    pub stalled_connections: usize,
    /// Stalled phase: size of the file the unread downloads open.
    #[arg(long, default_value = "16MiB", value_parser = crate::cli::format::parse_size)]
    pub stalled_file_size: u64,
    /// Stalled phase: size of the file another client uploads and downloads.
    #[arg(long, default_value = "1MiB", value_parser = crate::cli::format::parse_size)]
    pub stalled_round_trip_size: u64,
    /// Stalled phase: round trips measured (finish them within the server's
    /// --transfer-idle-secs, after which the stalled transfers end).
    #[arg(long, default_value_t = 10)]
    pub stalled_rounds: usize,
    /// Also hash the HTTP body with SHA-256. Off by default, so that the figure is the server's
    /// rather than the client's hashing speed; the body's length and ETag are checked either way.
    #[arg(long)]
    pub http_sha256: bool,
}

pub async fn run(connect: &Connect, args: BenchArgs) -> CliResult<()> {
    match args.command {
        BenchCommand::Events(bench) => events(connect, args.pid, bench).await,
        BenchCommand::Files(bench) => files(connect, args.pid, bench).await,
        BenchCommand::Chat(bench) => chat::run(connect, args.pid, bench).await,
        BenchCommand::Notify(bench) => notify::run(connect, args.pid, bench).await,
        BenchCommand::Metrics(bench) => metrics::run(connect, args.pid, bench).await,
        BenchCommand::Live(bench) => live::run(connect, args.pid, bench).await,
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
        self.status_field("VmHWM:")
    }

    /// Current RSS in bytes.
    fn current(&self) -> Option<u64> {
        self.status_field("VmRSS:")
    }

    /// A `… kB` line of /proc/<pid>/status, in bytes.
    fn status_field(&self, name: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with(name))?;
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

fn rate(count: u64, elapsed: Duration) -> u64 {
    (count as f64 / elapsed.as_secs_f64().max(1e-9)) as u64
}

use super::Client;

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
    let publish_pool = match &bench.publish_to {
        Some(server) => {
            let other = Connect {
                server: server.clone(),
                ..connect.clone()
            };
            eprintln!("latency phases publish through {server}");
            clients(&other, bench.connections).await?
        }
        None => pool.clone(),
    };
    let rss = RssProbe { pid };
    let mut rows = Vec::new();
    eprintln!("bench run {run_id} against {}", connect.server);
    for phase in &bench.phases {
        rss.reset();
        let row = match phase.as_str() {
            "append" => append_phase(&pool, run_id, &bench).await?,
            "import" => import_phase(&pool, run_id, &bench).await?,
            "replay" => replay_phase(&pool, run_id, &bench, &rss).await?,
            "fanout" => latency_phase(&pool, &publish_pool, run_id, &bench, false).await?,
            "hot" => latency_phase(&pool, &publish_pool, run_id, &bench, true).await?,
            other => return Err(fail(format!("unknown phase {other:?}"))),
        };
        rows.push(finish_row(row, &rss));
    }
    if let Some(database) = &bench.database {
        let row = disk_row(database).await?;
        eprintln!("  {} → {} ({})", row.figure, row.result, row.detail);
        rows.push(row);
    }
    print_table(
        &format!(
            "streamhub bench events: server {}{}",
            connect.server,
            pid.map(|p| format!(", pid {p}")).unwrap_or_default()
        ),
        &rows,
    );
    Ok(())
}

/// Disk per stored record of the server's SQLite database: file and WAL over every record.
async fn disk_row(database: &str) -> CliResult<Row> {
    let url = if database.contains("://") || database.starts_with("sqlite:") {
        database.to_string()
    } else {
        format!("sqlite://{database}")
    };
    let footprint = crate::store::footprint(&url)
        .await
        .map_err(|e| fail(format!("--database {database}: {e}")))?;
    let per_record = footprint.bytes.checked_div(footprint.records).unwrap_or(0);
    Ok(Row {
        figure: "disk per stored record (database + WAL)".into(),
        result: format!("{per_record} B"),
        detail: format!(
            "{:.1} MB over {} records",
            footprint.bytes as f64 / 1e6,
            thousands(footprint.records)
        ),
        peak_rss: None,
    })
}

/// Stamps a finished phase's row with the server's peak RSS and reports it on stderr.
fn finish_row(row: Row, rss: &RssProbe) -> Row {
    let row = Row {
        peak_rss: rss.peak(),
        ..row
    };
    eprintln!("  {} → {} ({})", row.figure, row.result, row.detail);
    row
}

fn print_table(title: &str, rows: &[Row]) {
    println!();
    println!("{title}");
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
    publish_pool: &[Client],
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
        let mut client = publish_pool[i as usize % publish_pool.len()].clone();
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
    let across = if bench.publish_to.is_some() {
        ", published via the other replica"
    } else {
        ""
    };
    let figure = if hot {
        format!(
            "{} subs on 1 hot user, {rate_per_sec} appends/s{across}",
            thousands(bench.subs as u64)
        )
    } else {
        format!(
            "{} subs on {} users, {rate_per_sec} appends/s{across}",
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

// ------------------------------------------------------------------------------------- files

/// Deterministic pseudo-random bytes (SplitMix64 words, little-endian). The same seed gives the
/// same bytes however the output is sliced into buffers, so the checksum pass and the upload
/// see identical data without either holding it.
struct DataGen {
    state: u64,
    spare: [u8; 8],
    spare_at: usize,
}

impl DataGen {
    fn new(seed: u64) -> Self {
        DataGen {
            state: seed,
            spare: [0; 8],
            spare_at: 8,
        }
    }

    fn next_word(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill(&mut self, out: &mut [u8]) {
        let mut start = 0;
        while start < out.len() && self.spare_at < 8 {
            out[start] = self.spare[self.spare_at];
            self.spare_at += 1;
            start += 1;
        }
        let mut words = out[start..].chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_word().to_le_bytes());
        }
        let tail = words.into_remainder();
        if !tail.is_empty() {
            self.spare = self.next_word().to_le_bytes();
            tail.copy_from_slice(&self.spare[..tail.len()]);
            self.spare_at = tail.len();
        }
    }
}

/// SHA-256 of the first `size` bytes of `DataGen::new(seed)`.
fn generated_checksum(seed: u64, size: u64) -> String {
    let mut generator = DataGen::new(seed);
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1024 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(buffer.len() as u64) as usize;
        generator.fill(&mut buffer[..n]);
        sha2::Digest::update(&mut hasher, &buffer[..n]);
        left -= n as u64;
    }
    crate::cli::format::hex_digest(hasher)
}

use sha2::Digest as _;

/// A size as given: binary units when it is a whole number of KiB, decimal otherwise.
fn size_label(bytes: u64) -> String {
    if bytes.is_multiple_of(1024) {
        indicatif::HumanBytes(bytes).to_string()
    } else {
        indicatif::DecimalBytes(bytes).to_string()
    }
}

/// MB/s with MB = 10^6 bytes.
fn megabytes_per_sec(bytes: u64, elapsed: Duration) -> String {
    format!(
        "{} MB/s",
        thousands((bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)).round() as u64)
    )
}

/// What the upload phase stored, for the download phases.
struct Uploaded {
    file_id: String,
    checksum: String,
    download_url: String,
}

async fn files(connect: &Connect, pid: Option<u32>, bench: FilesBench) -> CliResult<()> {
    const MAX_CHUNK: u64 = 4 * 1024 * 1024;
    if bench.chunk == 0 || bench.chunk > MAX_CHUNK {
        return Err(fail(format!(
            "--chunk must be between 1 byte and 4 MiB, not {}",
            size_label(bench.chunk)
        )));
    }
    for phase in &bench.phases {
        if !["upload", "download", "http", "stalled"].contains(&phase.as_str()) {
            return Err(fail(format!(
                "unknown phase {phase:?}; use upload, download, http or stalled"
            )));
        }
    }
    let needs_upload = bench.phases.iter().any(|p| p == "download" || p == "http");
    if needs_upload && !bench.phases.iter().any(|p| p == "upload") {
        return Err(fail(
            "the download and http phases fetch the file that the upload phase stores: \
             include upload in --phases",
        ));
    }
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let seed = u64::from_str_radix(run_id, 16).unwrap_or(0x5eed);
    let mut client = connect.client().await?;
    let rss = RssProbe { pid };
    let idle_rss = rss.current();
    let sized = if bench.phases.iter().any(|p| p == "upload") {
        format!(": {} bytes", thousands(bench.size))
    } else {
        String::new()
    };
    eprintln!("bench run {run_id} against {}{sized}", connect.server);
    let mut rows = Vec::new();
    let mut uploaded: Option<Uploaded> = None;
    for phase in &bench.phases {
        let row = match (phase.as_str(), &uploaded) {
            ("upload", _) => {
                let (row, stored) =
                    file_upload_phase(&mut client, run_id, seed, &bench, &rss).await?;
                uploaded = Some(stored);
                row
            }
            ("download", Some(stored)) => {
                rss.reset();
                file_download_phase(&mut client, stored, bench.size).await?
            }
            ("http", Some(stored)) => {
                rss.reset();
                file_http_phase(stored, bench.size, bench.http_sha256).await?
            }
            ("stalled", _) => {
                rss.reset();
                stalled::stalled_phase(connect, &bench).await?
            }
            (other, _) => {
                return Err(fail(format!(
                    "phase {other} needs the upload phase to run before it"
                )));
            }
        };
        rows.push(finish_row(row, &rss));
    }
    print_table(
        &format!(
            "streamhub bench files: server {}{}{}; MB = 10^6 bytes",
            connect.server,
            pid.map(|p| format!(", pid {p}")).unwrap_or_default(),
            idle_rss
                .map(|b| format!(
                    ", server RSS before the run {:.1} MiB",
                    b as f64 / (1024.0 * 1024.0)
                ))
                .unwrap_or_default()
        ),
        &rows,
    );
    if let Some(stored) = uploaded {
        println!("(the file stays on the server: {})", stored.download_url);
    }
    Ok(())
}

/// UploadFile of `size` generated bytes in `chunk`-byte messages, with the checksum computed in
/// a first pass over the same generator (not timed). Timed from the call to the verified,
/// durable answer.
async fn file_upload_phase(
    client: &mut Client,
    run_id: &str,
    seed: u64,
    bench: &FilesBench,
    rss: &RssProbe,
) -> CliResult<(Row, Uploaded)> {
    let size = bench.size;
    let total_size =
        i64::try_from(size).map_err(|_| fail(format!("--size {size} is too large")))?;
    eprintln!("  hashing the generated data first (not timed)…");
    let checksum = tokio::task::spawn_blocking(move || generated_checksum(seed, size))
        .await
        .map_err(|e| fail(format!("checksum task failed: {e}")))?;

    let metadata = crate::proto::FileChunk {
        data: Some(crate::proto::file_chunk::Data::Metadata(
            crate::proto::FileMetadata {
                filename: format!("bench-{run_id}.bin"),
                total_size,
                content_type: "application/octet-stream".into(),
                checksum: checksum.clone(),
                file_id: String::new(),
                created_at: None,
                download_url: String::new(),
            },
        )),
        offset: 0,
    };
    let chunk = bench.chunk;
    let mut generator = DataGen::new(seed);
    let mut position = 0u64;
    let chunks = std::iter::from_fn(move || {
        if position >= size {
            return None;
        }
        let n = chunk.min(size - position) as usize;
        let mut bytes = vec![0u8; n];
        generator.fill(&mut bytes);
        let message = crate::proto::FileChunk {
            data: Some(crate::proto::file_chunk::Data::Chunk(bytes)),
            offset: position as i64,
        };
        position += n as u64;
        Some(message)
    });
    let messages = tokio_stream::iter(std::iter::once(metadata).chain(chunks));

    rss.reset();
    let start = Instant::now();
    let response = client
        .upload_file(messages)
        .await
        .map_err(|s| fail(format!("upload failed: {:?}: {}", s.code(), s.message())))?
        .into_inner();
    let elapsed = start.elapsed();
    if response.bytes_uploaded != total_size || !response.checksum_verified {
        return Err(fail(format!(
            "upload answered {} bytes, checksum_verified={}; expected {size} bytes, verified",
            response.bytes_uploaded, response.checksum_verified
        )));
    }
    let row = Row {
        figure: format!(
            "UploadFile, {} in {} chunks",
            size_label(size),
            size_label(chunk)
        ),
        result: megabytes_per_sec(size, elapsed),
        detail: format!(
            "{:.2} s to a verified, durable answer",
            elapsed.as_secs_f64()
        ),
        peak_rss: None,
    };
    Ok((
        row,
        Uploaded {
            file_id: response.file_id,
            checksum,
            download_url: response.download_url,
        },
    ))
}

/// DownloadFile of the whole file; the client checks offsets and the SHA-256, and writes
/// nothing to disk.
async fn file_download_phase(client: &mut Client, stored: &Uploaded, size: u64) -> CliResult<Row> {
    use crate::proto::file_chunk::Data;
    let start = Instant::now();
    let mut stream = client
        .download_file(crate::proto::DownloadFileRequest {
            file_id: stored.file_id.clone(),
            offset: 0,
        })
        .await?
        .into_inner();
    // Hashed inline: on this 2-core machine a separate hashing thread measured no faster.
    let mut hasher = sha2::Sha256::new();
    let mut received = 0u64;
    let mut chunks = 0u64;
    let mut largest = 0usize;
    let mut saw_metadata = false;
    while let Some(message) = stream.message().await? {
        match message.data {
            Some(Data::Metadata(_)) if !saw_metadata && chunks == 0 => saw_metadata = true,
            Some(Data::Metadata(_)) => return Err(fail("download sent metadata twice or late")),
            Some(Data::Chunk(bytes)) => {
                if message.offset != received as i64 {
                    return Err(fail(format!(
                        "download chunk at offset {} where {received} was expected",
                        message.offset
                    )));
                }
                received += bytes.len() as u64;
                largest = largest.max(bytes.len());
                chunks += 1;
                hasher.update(&bytes);
            }
            None => {}
        }
    }
    let digest = crate::cli::format::hex_digest(hasher);
    let elapsed = start.elapsed();
    if !saw_metadata || received != size || digest != stored.checksum {
        return Err(fail(format!(
            "download did not match the upload: metadata {saw_metadata}, {received} of {size} \
             bytes, sha256 {digest}"
        )));
    }
    Ok(Row {
        figure: format!("DownloadFile (gRPC), {}", size_label(size)),
        result: megabytes_per_sec(size, elapsed),
        detail: format!(
            "{:.2} s, sha256 verified, {} chunks of ≤ {}",
            elapsed.as_secs_f64(),
            thousands(chunks),
            indicatif::HumanBytes(largest as u64)
        ),
        peak_rss: None,
    })
}

/// GET of the download_url with a minimal HTTP/1.1 client; the body is counted (and hashed with
/// `hash`) and discarded.
async fn file_http_phase(stored: &Uploaded, size: u64, hash: bool) -> CliResult<Row> {
    let start = Instant::now();
    let body = http_get(&stored.download_url, hash).await?;
    let elapsed = start.elapsed();
    if body.length != size {
        return Err(fail(format!(
            "GET {} returned {} bytes, expected {size}",
            stored.download_url, body.length
        )));
    }
    if let Some(digest) = &body.sha256
        && *digest != stored.checksum
    {
        return Err(fail(format!(
            "GET {} body hashes to {digest}, expected {}",
            stored.download_url, stored.checksum
        )));
    }
    let etag = match &body.etag {
        Some(etag) if etag.contains(&stored.checksum) => "ETag carries the sha256",
        Some(_) => "ETag does NOT carry the sha256",
        None => "no ETag",
    };
    Ok(Row {
        figure: format!("HTTP GET download_url, {}", size_label(size)),
        result: megabytes_per_sec(size, elapsed),
        detail: format!(
            "{:.2} s, length checked, {}, {etag}",
            elapsed.as_secs_f64(),
            if body.sha256.is_some() {
                "sha256 verified"
            } else {
                "body not hashed"
            }
        ),
        peak_rss: None,
    })
}

/// What [`http_get`] learned of a response.
struct HttpBody {
    length: u64,
    etag: Option<String>,
    sha256: Option<String>,
}

/// A minimal HTTP/1.1 GET over a plain TCP connection: sends the request, reads the head,
/// requires 200 and a Content-Length, then reads (and hashes, with `hash`) exactly that many
/// bytes of body into a reused buffer.
async fn http_get(url: &str, hash: bool) -> CliResult<HttpBody> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        fail(format!(
            "download_url {url:?} is not http://; the bench's HTTP client speaks plain HTTP only"
        ))
    })?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    };
    let address = if authority
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut socket = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|e| fail(format!("cannot connect to {address} for {url}: {e}")))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: streamhub-bench\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await?;

    // The head: everything up to the blank line, capped.
    const MAX_HEAD: usize = 64 * 1024;
    let mut buffer = vec![0u8; 1024 * 1024];
    let mut filled = 0;
    let head_end = loop {
        if let Some(at) = buffer[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if filled >= MAX_HEAD {
            return Err(fail(format!("GET {url}: response head over 64 KiB")));
        }
        let n = socket.read(&mut buffer[filled..MAX_HEAD]).await?;
        if n == 0 {
            return Err(fail(format!(
                "GET {url}: connection closed before a response"
            )));
        }
        filled += n;
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(fail(format!("GET {url}: {status_line}")));
    }
    let mut content_length = None;
    let mut etag = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.parse::<u64>().ok(),
            "etag" => etag = Some(value.to_string()),
            "transfer-encoding" if !value.eq_ignore_ascii_case("identity") => {
                return Err(fail(format!(
                    "GET {url}: Transfer-Encoding {value} instead of a Content-Length"
                )));
            }
            _ => {}
        }
    }
    let length = content_length
        .ok_or_else(|| fail(format!("GET {url}: the response has no Content-Length")))?;

    let mut hasher = hash.then(sha2::Sha256::new);
    let body_start = head_end + 4;
    let mut received = (filled - body_start) as u64;
    if let Some(hasher) = hasher.as_mut() {
        hasher.update(&buffer[body_start..filled]);
    }
    while received < length {
        let want = (length - received).min(buffer.len() as u64) as usize;
        let n = socket.read(&mut buffer[..want]).await?;
        if n == 0 {
            return Err(fail(format!(
                "GET {url}: connection closed after {received} of {length} body bytes"
            )));
        }
        if let Some(hasher) = hasher.as_mut() {
            hasher.update(&buffer[..n]);
        }
        received += n as u64;
    }
    if received > length {
        return Err(fail(format!(
            "GET {url}: {received} body bytes, more than the Content-Length {length}"
        )));
    }
    Ok(HttpBody {
        length: received,
        etag,
        sha256: hasher.map(crate::cli::format::hex_digest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_data_does_not_depend_on_how_it_is_sliced() {
        let mut whole = vec![0u8; 1000];
        DataGen::new(7).fill(&mut whole);
        let mut sliced = vec![0u8; 1000];
        let mut generator = DataGen::new(7);
        let mut at = 0;
        for n in [3, 5, 8, 13, 1, 64, 906] {
            generator.fill(&mut sliced[at..at + n]);
            at += n;
        }
        assert_eq!(whole, sliced);
        assert_ne!(whole[..8], whole[8..16]);
    }
}
