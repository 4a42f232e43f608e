//! `streamhub bench metrics`: CollectMetrics points stored per second over one long stream and
//! over many concurrent streams, and QueryMetrics latency over what they stored.
//!
//! A phase's time runs from the call's start to its result, which the server sends only once
//! every point is durable, so the rate is points *stored* per second. Points are generated on
//! the fly (nothing is held whole), so the client's encoding is part of the figure, as it would
//! be for a real client. Series are named `bench_<run>_…`: a run never touches other data.

use super::super::{CliResult, Connect, fail};
use super::{Client, Row, RssProbe, clients, finish_row, latency_summary, print_table, rate};
use crate::cli::format::thousands;
use crate::proto::{MetricData, MetricsCollectionResult, QueryMetricsRequest};
use clap::Args;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;

#[derive(Debug, Args)]
pub struct MetricsBench {
    /// Phases to run, comma separated: one (one long stream), many (concurrent streams),
    /// query (QueryMetrics over what `one` stored; needs `one` before it).
    #[arg(long, value_delimiter = ',', default_value = "one,many,query")]
    pub phases: Vec<String>,
    /// Points the one-stream phase sends.
    #[arg(long, default_value_t = 1_000_000)]
    pub points: u64,
    /// Concurrent streams in the many-streams phase.
    #[arg(long, default_value_t = 16)]
    pub streams: u64,
    /// Points the many-streams phase sends in all, split evenly over the streams.
    #[arg(long, default_value_t = 1_000_000)]
    pub many_points: u64,
    /// Series each stream writes to, in turn (one label `series` with this many values).
    #[arg(long, default_value_t = 100)]
    pub series: u64,
    /// QueryMetrics calls in the query phase.
    #[arg(long, default_value_t = 20)]
    pub queries: u64,
    /// Client connections the many-streams phase spreads its streams over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
}

/// Time between a stream's consecutive points: a million points span about 17 minutes, so the
/// query phase has real buckets to fill.
const SPACING_MICROS: i64 = 1000;

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// What a stream wrote: where to find it again.
struct Written {
    name: String,
    start_micros: i64,
    end_micros: i64,
    points: u64,
}

/// Sends `points` points of `name` over one CollectMetrics call, cycling through `series`
/// label values, [`SPACING_MICROS`] apart from `start_micros`; checks the result's counts.
async fn one_stream(
    mut client: Client,
    name: String,
    stream: String,
    points: u64,
    series: u64,
    start_micros: i64,
) -> CliResult<MetricsCollectionResult> {
    let series = series.max(1);
    let label_sets: Vec<HashMap<String, String>> = (0..series)
        .map(|s| {
            HashMap::from([
                ("stream".to_string(), stream.clone()),
                ("series".to_string(), s.to_string()),
            ])
        })
        .collect();
    let messages = tokio_stream::iter((0..points).map(move |i| MetricData {
        name: name.clone(),
        value: (i % 1000) as f64,
        timestamp: Some(crate::proto::timestamp_from_micros(
            start_micros + i as i64 * SPACING_MICROS,
        )),
        labels: label_sets[(i % series) as usize].clone(),
    }));
    let result = client.collect_metrics(messages).await?.into_inner();
    let summarised: u64 = result.summaries.iter().map(|s| s.count).sum();
    if result.metrics_received != points
        || result.metrics_stored != points
        || result.metrics_rejected != 0
        || summarised != points
        || result.summaries.len() as u64 != series.min(points)
    {
        return Err(fail(format!(
            "CollectMetrics answered received {}, stored {}, rejected {}, {} series summing \
             {summarised}; expected {points} points over {} series, none rejected",
            result.metrics_received,
            result.metrics_stored,
            result.metrics_rejected,
            result.summaries.len(),
            series.min(points)
        )));
    }
    Ok(result)
}

pub async fn run(connect: &Connect, pid: Option<u32>, bench: MetricsBench) -> CliResult<()> {
    for phase in &bench.phases {
        if !["one", "many", "query"].contains(&phase.as_str()) {
            return Err(fail(format!(
                "unknown phase {phase:?}; use one, many or query"
            )));
        }
    }
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let pool = clients(connect, bench.connections).await?;
    let rss = RssProbe { pid };
    eprintln!("bench run {run_id} against {}", connect.server);
    let mut rows = Vec::new();
    let mut written: Option<Written> = None;
    for phase in &bench.phases {
        rss.reset();
        let row = match phase.as_str() {
            "one" => {
                let (row, w) = one_phase(&pool[0], run_id, &bench).await?;
                written = Some(w);
                row
            }
            "many" => many_phase(&pool, run_id, &bench).await?,
            _ => match &written {
                Some(w) => query_phase(&pool[0], w, &bench).await?,
                None => {
                    return Err(fail(
                        "the query phase reads what the one phase stored: put one before it",
                    ));
                }
            },
        };
        rows.push(finish_row(row, &rss));
    }
    print_table(
        &format!(
            "streamhub bench metrics: server {}{}",
            connect.server,
            pid.map(|p| format!(", pid {p}")).unwrap_or_default()
        ),
        &rows,
    );
    Ok(())
}

async fn one_phase(
    client: &Client,
    run_id: &str,
    bench: &MetricsBench,
) -> CliResult<(Row, Written)> {
    let name = format!("bench_{run_id}_one");
    let start_micros = now_micros() - bench.points as i64 * SPACING_MICROS;
    let start = Instant::now();
    one_stream(
        client.clone(),
        name.clone(),
        "0".into(),
        bench.points,
        bench.series,
        start_micros,
    )
    .await?;
    let elapsed = start.elapsed();
    Ok((
        Row {
            figure: format!(
                "CollectMetrics, 1 stream, {} points, {} series",
                thousands(bench.points),
                bench.series
            ),
            result: format!("{} points/s", thousands(rate(bench.points, elapsed))),
            detail: format!(
                "{:.2} s to the result (every point durable), counts checked",
                elapsed.as_secs_f64()
            ),
            peak_rss: None,
        },
        Written {
            name,
            start_micros,
            end_micros: start_micros + bench.points as i64 * SPACING_MICROS,
            points: bench.points,
        },
    ))
}

async fn many_phase(pool: &[Client], run_id: &str, bench: &MetricsBench) -> CliResult<Row> {
    let streams = bench.streams.max(1);
    let per_stream = bench.many_points / streams;
    let total = per_stream * streams;
    let name = format!("bench_{run_id}_many");
    let start_micros = now_micros() - per_stream as i64 * SPACING_MICROS;
    let start = Instant::now();
    let mut calls = JoinSet::new();
    for s in 0..streams {
        let client = pool[s as usize % pool.len()].clone();
        let name = name.clone();
        let series = bench.series;
        calls.spawn(async move {
            let began = Instant::now();
            one_stream(
                client,
                name,
                s.to_string(),
                per_stream,
                series,
                start_micros,
            )
            .await?;
            CliResult::Ok(began.elapsed())
        });
    }
    let mut durations = Vec::with_capacity(streams as usize);
    while let Some(done) = calls.join_next().await {
        durations.push(done.map_err(|e| fail(format!("stream task failed: {e}")))??);
    }
    let elapsed = start.elapsed();
    durations.sort_unstable();
    Ok(Row {
        figure: format!(
            "CollectMetrics, {streams} streams, {} points each, {} series each",
            thousands(per_stream),
            bench.series
        ),
        result: format!("{} points/s", thousands(rate(total, elapsed))),
        detail: format!(
            "{:.2} s in all; per stream {:.2}–{:.2} s; counts checked",
            elapsed.as_secs_f64(),
            durations.first().copied().unwrap_or_default().as_secs_f64(),
            durations.last().copied().unwrap_or_default().as_secs_f64()
        ),
        peak_rss: None,
    })
}

/// QueryMetrics of every series the one phase wrote, cut into 60 buckets, `queries` times.
async fn query_phase(client: &Client, written: &Written, bench: &MetricsBench) -> CliResult<Row> {
    let span = (written.end_micros - written.start_micros).max(1);
    let step_seconds = u32::try_from((span / 60).div_euclid(1_000_000) + 1).unwrap_or(u32::MAX);
    let request = QueryMetricsRequest {
        name: written.name.clone(),
        labels: HashMap::new(),
        start: Some(crate::proto::timestamp_from_micros(written.start_micros)),
        end: Some(crate::proto::timestamp_from_micros(written.end_micros)),
        step_seconds,
    };
    let mut client = client.clone();
    let mut latencies = Vec::with_capacity(bench.queries as usize);
    let mut series = 0;
    let mut buckets = 0;
    for _ in 0..bench.queries.max(1) {
        let sent = Instant::now();
        let response = client.query_metrics(request.clone()).await?.into_inner();
        latencies.push(sent.elapsed());
        let counted: u64 = response
            .series
            .iter()
            .flat_map(|s| s.buckets.iter().map(|b| b.count))
            .sum();
        if counted != written.points {
            return Err(fail(format!(
                "QueryMetrics counted {counted} points; the one phase stored {}",
                written.points
            )));
        }
        series = response.series.len();
        buckets = response
            .series
            .iter()
            .map(|s| s.buckets.len())
            .sum::<usize>();
    }
    let median = {
        let mut sorted = latencies.clone();
        sorted.sort_unstable();
        sorted[sorted.len() / 2]
    };
    Ok(Row {
        figure: format!(
            "QueryMetrics, {series} series, {} points, {buckets} buckets",
            thousands(written.points)
        ),
        result: format!("{:.1} ms median", median.as_secs_f64() * 1e3),
        detail: format!(
            "{} calls: {}; {} points/s scanned",
            latencies.len(),
            latency_summary(latencies),
            thousands(rate(written.points, median.max(Duration::from_micros(1))))
        ),
        peak_rss: None,
    })
}
