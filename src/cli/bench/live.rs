//! `streamhub bench live`: ProcessLiveData round trips per second and per-input latency.
//!
//! The throughput phase runs each stream's sender and receiver at the same time, so as many
//! inputs are in flight as HTTP/2 flow control lets through (its latency is mostly queueing).
//! The ping-pong phase then sends one input at a time for the unloaded round-trip latency. The bench checks that every input got exactly one result,
//! in order and without an error; it never computes statistics itself.

use super::super::{CliResult, Connect, fail};
use super::{Client, Row, RssProbe, clients, finish_row, latency_summary, print_table, rate};
use crate::cli::format::thousands;
use crate::proto::DataInput;
use crate::proto::processing_result::Outcome;
use clap::Args;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How much to send, and over how many streams and keys.
#[derive(Debug, Args)]
pub struct LiveBench {
    /// Inputs in all, split evenly over the streams.
    #[arg(long, default_value_t = 1_000_000)]
    pub inputs: u64,
    /// Distinct keys in each stream (at most the server's --live-max-keys).
    #[arg(long, default_value_t = 100)]
    pub keys: u64,
    /// Concurrent ProcessLiveData streams, each on its own connection.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// Round trips with one input in flight at a time (the unloaded latency); 0 skips them.
    #[arg(long, default_value_t = 10_000)]
    pub ping_pong: u64,
}

/// What one stream saw.
struct StreamReport {
    results: u64,
    anomalies: u64,
    latencies: Vec<Duration>,
}

pub async fn run(connect: &Connect, pid: Option<u32>, bench: LiveBench) -> CliResult<()> {
    if bench.keys == 0 || bench.streams == 0 {
        return Err(fail("--keys and --streams must be at least 1"));
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    eprintln!("bench run {run_id} against {}", connect.server);
    let pool = clients(connect, bench.streams).await?;
    let rss = RssProbe { pid };
    rss.reset();

    let per_stream = bench.inputs / bench.streams as u64;
    let start = Instant::now();
    let mut streams = JoinSet::new();
    for (n, client) in pool.into_iter().enumerate() {
        let keys: Vec<String> = (0..bench.keys)
            .map(|k| format!("bench-{run_id}-{n}-{k}"))
            .collect();
        streams.spawn(one_stream(client, keys, per_stream, n as u64));
    }
    let mut total = StreamReport {
        results: 0,
        anomalies: 0,
        latencies: Vec::with_capacity(bench.inputs as usize),
    };
    while let Some(joined) = streams.join_next().await {
        let report = joined.map_err(|e| fail(format!("stream task failed: {e}")))??;
        total.results += report.results;
        total.anomalies += report.anomalies;
        total.latencies.extend(report.latencies);
    }
    let elapsed = start.elapsed();

    let mut rows = vec![finish_row(
        Row {
            figure: format!(
                "ProcessLiveData, {} stream{}, {} inputs over {} keys each",
                bench.streams,
                if bench.streams == 1 { "" } else { "s" },
                thousands(total.results),
                bench.keys
            ),
            result: format!("{} inputs/s", thousands(rate(total.results, elapsed))),
            detail: format!(
                "{:.2} s; round trip {}; {} anomalies; order and counts checked",
                elapsed.as_secs_f64(),
                latency_summary(std::mem::take(&mut total.latencies)),
                thousands(total.anomalies)
            ),
            peak_rss: None,
        },
        &rss,
    )];
    if bench.ping_pong > 0 {
        rss.reset();
        let mut client = connect.client().await?;
        let row = ping_pong(&mut client, &format!("bench-{run_id}-pp"), bench.ping_pong).await?;
        rows.push(finish_row(row, &rss));
    }
    print_table(
        &format!(
            "streamhub bench live: server {}{}",
            connect.server,
            pid.map(|p| format!(", pid {p}")).unwrap_or_default()
        ),
        &rows,
    );
    Ok(())
}

/// `count` round trips on one stream, each input sent only after the previous result arrived.
async fn ping_pong(client: &mut Client, key: &str, count: u64) -> CliResult<Row> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut stream = client
        .process_live_data(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut noise = Noise::new(count);
    let mut latencies = Vec::with_capacity(count as usize);
    let start = Instant::now();
    for i in 0..count {
        let sent = Instant::now();
        let input = DataInput {
            id: i.to_string(),
            key: key.to_string(),
            value: noise.next(),
            timestamp: None,
        };
        tx.send(input)
            .await
            .map_err(|_| fail("the stream closed early"))?;
        let result = stream
            .message()
            .await?
            .ok_or_else(|| fail("the stream ended early"))?;
        latencies.push(sent.elapsed());
        if result.input_id != i.to_string() {
            return Err(fail(format!(
                "result for input {:?} where input {i} was due",
                result.input_id
            )));
        }
    }
    let elapsed = start.elapsed();
    drop(tx);
    while stream.message().await?.is_some() {}
    Ok(Row {
        figure: format!(
            "ProcessLiveData, 1 input in flight, {} round trips",
            thousands(count)
        ),
        result: format!("{} inputs/s", thousands(rate(count, elapsed))),
        detail: format!("round trip {}", latency_summary(latencies)),
        peak_rss: None,
    })
}

/// Sends `count` inputs on one stream while reading the results; checks one result per input,
/// in order, none an error. The latency of an input runs from when the client transport took it
/// to when its result was read.
async fn one_stream(
    mut client: Client,
    keys: Vec<String>,
    count: u64,
    seed: u64,
) -> CliResult<StreamReport> {
    let origin = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let stamps = sent_at.clone();
    let mut noise = Noise::new(seed);
    let inputs = tokio_stream::iter((0..count).map(move |i| {
        let k = (i % keys.len() as u64) as usize;
        // Each key hovers around its own level; one input in 997 is a spike.
        let spike = if i % 997 == 0 { 25.0 } else { 0.0 };
        let input = DataInput {
            id: i.to_string(),
            key: keys[k].clone(),
            value: k as f64 * 10.0 + noise.next() + spike,
            timestamp: None,
        };
        stamps[i as usize].store(origin.elapsed().as_nanos() as u64, Ordering::Relaxed);
        input
    }));
    let mut stream = client.process_live_data(inputs).await?.into_inner();
    let mut report = StreamReport {
        results: 0,
        anomalies: 0,
        latencies: Vec::with_capacity(count as usize),
    };
    while let Some(result) = stream.message().await? {
        let expected = report.results;
        if result.input_id.parse::<u64>().ok() != Some(expected) {
            return Err(fail(format!(
                "result for input {:?} where input {expected} was due",
                result.input_id
            )));
        }
        let sent = Duration::from_nanos(sent_at[expected as usize].load(Ordering::Relaxed));
        report.latencies.push(origin.elapsed().saturating_sub(sent));
        match result.outcome {
            Some(Outcome::Stats(stats)) => report.anomalies += u64::from(stats.anomaly),
            Some(Outcome::Error(e)) => {
                return Err(fail(format!(
                    "input {expected} was rejected: {} {}",
                    e.code, e.message
                )));
            }
            None => return Err(fail(format!("result {expected} has no outcome"))),
        }
        report.results += 1;
    }
    if report.results != count {
        return Err(fail(format!(
            "{} results for {count} inputs",
            report.results
        )));
    }
    Ok(report)
}

/// Roughly normal noise with stddev 1: the sum of four uniforms, centred and scaled.
struct Noise(u64);

impl Noise {
    fn new(seed: u64) -> Self {
        Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn uniform(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        let sum: f64 = (0..4).map(|_| self.uniform()).sum();
        (sum - 2.0) * 3f64.sqrt()
    }
}
