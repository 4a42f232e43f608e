//! `streamhub metrics …`: push points from stdin in the Prometheus text style with
//! CollectMetrics, print bucketed figures with QueryMetrics, and list the known series with
//! ListMetricSeries.
//!
//! Results go to stdout; bad input lines and diagnostics go to stderr. This module parses text
//! and prints; it never decides what a valid metric is: the server does, and its verdicts are
//! printed against the input's line numbers.

use super::format::{When, parse_duration, parse_when};
use super::{CliResult, Connect, fail};
use crate::proto::{
    ListMetricSeriesRequest, ListMetricSeriesResponse, MetricData, MetricSeries,
    MetricsCollectionResult, QueryMetricsRequest,
};
use clap::{Args, Subcommand};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncBufReadExt;

#[derive(Debug, Args)]
pub struct MetricsArgs {
    #[command(subcommand)]
    pub command: MetricsCommand,
}

#[derive(Debug, Subcommand)]
pub enum MetricsCommand {
    /// Stream points from stdin to the server over one CollectMetrics call.
    ///
    /// One point a line, in the Prometheus text style:
    ///
    ///   name{label="value",other="v2"} VALUE [TIMESTAMP_MS]
    ///
    /// for example `http_requests_total{method="GET",code="200"} 1027 1700000000000`. Labels
    /// are optional (`temperature 21.5`); label values take the escapes \\, \" and \n. Without
    /// a timestamp the server stamps its own time. Blank lines and `#` comments are skipped. A
    /// line that cannot be parsed is reported with its number and skipped; points the server
    /// rejects are listed with their line numbers at the end.
    ///
    /// The server commits points as they arrive (every 200 ms by default), so they can be
    /// queried while the input is still open, e.g. `tail -f metrics.txt | streamhub metrics
    /// push`. Ctrl-C ends the input like end-of-file: what was sent is stored and summarised.
    ///
    /// The exit status is 1 when a line was not sent (it does not parse) or a point was not
    /// stored (the server rejected it).
    Push {
        /// Print only the summary line, not one line per series.
        #[arg(long)]
        quiet: bool,
        /// Print the server's result as proto3 JSON (a MetricsCollectionResult).
        #[arg(long)]
        json: bool,
    },
    /// Print the buckets of every series called NAME that has the given labels.
    ///
    /// Each bucket covers STEP seconds from the start of the range; empty buckets are not
    /// shown. Example: `streamhub metrics query http_requests_total --label code=200 --since
    /// 10m --step 60`.
    Query {
        /// The metric name.
        name: String,
        /// Only series with this label value (repeatable). `--label k=` means "no label k".
        #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Start of the range: a duration ago (90s, 10m, 2h, 7d) or an RFC 3339 time.
        #[arg(long, value_name = "WHEN", default_value = "1h", value_parser = parse_when)]
        since: When,
        /// End of the range (excluded): a duration ago or an RFC 3339 time; default now.
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        until: Option<When>,
        /// Bucket width: seconds, or a duration such as 30s, 5m or 1h.
        #[arg(long, default_value = "60", value_parser = parse_step)]
        step: u32,
        /// Print the answer as proto3 JSON (a QueryMetricsResponse).
        #[arg(long)]
        json: bool,
    },
    /// Print the known series, one `name{label="value",…}` a line, by name then labels.
    ///
    /// Only series that hold points are listed. Example: `streamhub metrics series --prefix
    /// http_`.
    Series {
        /// Only series whose name starts with this.
        #[arg(long, value_name = "TEXT", default_value = "")]
        prefix: String,
        /// Series to print (at most 1000).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Print the answer as proto3 JSON (a ListMetricSeriesResponse).
        #[arg(long)]
        json: bool,
    },
}

impl super::json::Proto for ListMetricSeriesResponse {
    const NAME: &'static str = "streaming.v1.ListMetricSeriesResponse";
}

fn parse_step(text: &str) -> Result<u32, String> {
    let seconds = parse_duration(text)?.as_secs();
    u32::try_from(seconds).map_err(|_| format!("step {text:?} is too long"))
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not K=V"))?;
    Ok((name.trim().to_string(), value.to_string()))
}

/// Parses one line of `name{k="v",…} value [timestamp_ms]`.
pub fn parse_line(line: &str) -> Result<MetricData, String> {
    let line = line.trim();
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return Err("expected a metric name first".into());
    }
    let mut rest = &line[name_end..];
    let mut labels = HashMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("expected a value after the name")?;
    let value: f64 = value
        .parse()
        .map_err(|_| format!("value {value:?} is not a number"))?;
    let timestamp = match fields.next() {
        None => None,
        Some(ms) => {
            let ms: i64 = ms
                .parse()
                .map_err(|_| format!("timestamp {ms:?} is not whole milliseconds"))?;
            Some(prost_types::Timestamp {
                seconds: ms.div_euclid(1000),
                nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
            })
        }
    };
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected {extra:?} after the timestamp"));
    }
    Ok(MetricData {
        name: name.to_string(),
        value,
        timestamp,
        labels,
    })
}

/// Parses `k="v",k2="v2"}` (after the opening brace) into `labels`; returns what follows `}`.
fn parse_labels<'a>(
    mut text: &'a str,
    labels: &mut HashMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix('}') {
            return Ok(rest);
        }
        let (name, rest) = text
            .split_once('=')
            .ok_or("expected label=\"value\" or }")?;
        let name = name.trim();
        let rest = rest
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("the value of label {name:?} must be in double quotes"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("the value of label {name:?} is not closed")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => return Err(format!("unknown escape \\{c} in label {name:?}")),
                    None => return Err(format!("the value of label {name:?} is not closed")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name:?} appears twice"));
        }
        text = rest[end + 1..].trim_start();
        if let Some(after) = text.strip_prefix(',') {
            text = after;
        } else if !text.starts_with('}') {
            return Err("expected , or } after a label".into());
        }
    }
}

/// The text form of a series: `name{k="v",…}` with labels sorted.
fn series_text(name: &str, labels: &HashMap<String, String>) -> String {
    let mut sorted: Vec<(&String, &String)> = labels.iter().collect();
    sorted.sort();
    let inner: Vec<String> = sorted
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    if inner.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", inner.join(","))
    }
}

/// Maps a point's index in the stream back to its input line: the lines skipped before each
/// point are recorded as runs, so the memory is per skipped run, not per point.
#[derive(Debug, Default)]
struct LineMap {
    /// (first point index after a skip, lines skipped before it in all).
    runs: Vec<(u64, u64)>,
}

impl LineMap {
    fn skipped(&mut self, next_index: u64, total_skipped: u64) {
        match self.runs.last_mut() {
            Some(last) if last.0 == next_index => last.1 = total_skipped,
            _ => self.runs.push((next_index, total_skipped)),
        }
    }

    /// The 1-based line number of point `index`.
    fn line(&self, index: u64) -> u64 {
        let at = self.runs.partition_point(|&(first, _)| first <= index);
        let skipped = if at == 0 { 0 } else { self.runs[at - 1].1 };
        index + skipped + 1
    }
}

pub async fn run(connect: &Connect, args: MetricsArgs) -> CliResult<()> {
    match args.command {
        MetricsCommand::Push { quiet, json } => push(connect, quiet, json).await,
        MetricsCommand::Query {
            name,
            labels,
            since,
            until,
            step,
            json,
        } => {
            let now = SystemTime::now();
            let request = QueryMetricsRequest {
                name,
                labels: labels.into_iter().collect(),
                start: Some(since.timestamp(now)),
                end: Some(until.unwrap_or(When::Ago(Duration::ZERO)).timestamp(now)),
                step_seconds: step,
            };
            let mut client = connect.client().await?;
            let response = client.query_metrics(request).await?.into_inner();
            if json {
                return super::json::print(&response);
            }
            print_series(&response.series, step);
            Ok(())
        }
        MetricsCommand::Series {
            prefix,
            limit,
            json,
        } => {
            let mut client = connect.client().await?;
            let response = client
                .list_metric_series(ListMetricSeriesRequest {
                    name_prefix: prefix,
                    limit,
                })
                .await?
                .into_inner();
            if json {
                return super::json::print(&response);
            }
            if response.series.is_empty() {
                eprintln!("(no series)");
            }
            for series in &response.series {
                super::print_line(&series_text(&series.name, &series.labels))?;
            }
            if response.series.len() == limit as usize {
                eprintln!("(the first {limit}; --limit or --prefix shows others)");
            }
            Ok(())
        }
    }
}

async fn push(connect: &Connect, quiet: bool, json: bool) -> CliResult<()> {
    let (tx, rx) = tokio::sync::mpsc::channel::<MetricData>(1024);
    let reader = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        let mut map = LineMap::default();
        let (mut line_no, mut sent, mut skipped, mut bad) = (0u64, 0u64, 0u64, 0u64);
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        loop {
            let line = tokio::select! {
                line = lines.next_line() => line,
                _ = &mut interrupted => Ok(None),
            };
            let line = match line {
                Ok(Some(line)) => line,
                Ok(None) => break,
                // Points are independent: what was sent is still stored and summarised.
                Err(e) => {
                    eprintln!(
                        "line {}: cannot read stdin ({e}); ending the input here",
                        line_no + 1
                    );
                    break;
                }
            };
            line_no += 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                skipped += 1;
                map.skipped(sent, skipped);
                continue;
            }
            match parse_line(trimmed) {
                Ok(point) => {
                    if tx.send(point).await.is_err() {
                        break; // The call failed; its error is reported below.
                    }
                    sent += 1;
                }
                Err(e) => {
                    eprintln!("line {line_no}: {e}; skipped");
                    bad += 1;
                    skipped += 1;
                    map.skipped(sent, skipped);
                }
            }
        }
        CliResult::Ok((line_no, sent, bad, map))
    });
    let mut client = connect.client().await?;
    let result = client
        .collect_metrics(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let (lines, sent, bad, map) = reader
        .await
        .map_err(|e| fail(format!("reader task failed: {e}")))??;
    let result = result?.into_inner();
    if json {
        super::json::print(&result)?;
        for error in &result.errors {
            eprintln!(
                "line {}: rejected: {}",
                map.line(error.index),
                error.message
            );
        }
    } else {
        print_push_result(&result, lines, sent, bad, &map, quiet);
    }
    let mut missing = Vec::new();
    if bad > 0 {
        missing.push(format!("{bad} unparsable lines were not sent"));
    }
    if result.metrics_rejected > 0 {
        missing.push(format!(
            "{} points were rejected and not stored",
            result.metrics_rejected
        ));
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(fail(missing.join("; ")))
    }
}

fn print_push_result(
    result: &MetricsCollectionResult,
    lines: u64,
    sent: u64,
    bad: u64,
    map: &LineMap,
    quiet: bool,
) {
    println!(
        "{lines} lines, {sent} points sent ({bad} unparsable lines skipped): {} received, {} \
         stored, {} rejected",
        result.metrics_received, result.metrics_stored, result.metrics_rejected
    );
    for error in &result.errors {
        println!(
            "  line {}: rejected: {}",
            map.line(error.index),
            error.message
        );
    }
    if result.metrics_rejected > result.errors.len() as u64 {
        println!(
            "  … and {} more rejected points",
            result.metrics_rejected - result.errors.len() as u64
        );
    }
    if quiet || result.summaries.is_empty() {
        return;
    }
    let rows: Vec<(String, &crate::proto::MetricSummary)> = result
        .summaries
        .iter()
        .map(|s| (series_text(&s.name, &s.labels), s))
        .collect();
    let width = rows.iter().map(|(t, _)| t.len()).max().unwrap_or(6).max(6);
    println!(
        "{:<width$}  {:>9}  {:>12}  {:>12}  {:>14}  {:>12}",
        "series", "count", "min", "max", "sum", "last"
    );
    for (text, s) in rows {
        println!(
            "{text:<width$}  {:>9}  {:>12}  {:>12}  {:>14}  {:>12}",
            s.count,
            number(s.min),
            number(s.max),
            number(s.sum),
            number(s.last)
        );
    }
}

/// A figure in at most 12 characters: its shortest exact form when that fits, scientific
/// otherwise.
fn number(x: f64) -> String {
    let plain = x.to_string();
    if plain.len() <= 12 {
        plain
    } else {
        format!("{x:.4e}")
    }
}

fn print_series(series: &[MetricSeries], step: u32) {
    if series.is_empty() {
        println!("no points in that range");
        return;
    }
    for (i, s) in series.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!(
            "{}  (buckets of {} s)",
            series_text(&s.name, &s.labels),
            if step == 0 { 60 } else { step }
        );
        println!(
            "  {:<30}  {:>9}  {:>12}  {:>12}  {:>14}  {:>12}",
            "bucket start", "count", "min", "max", "sum", "avg"
        );
        for b in &s.buckets {
            let start = b
                .start
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            let avg = if b.count > 0 {
                b.sum / b.count as f64
            } else {
                0.0
            };
            println!(
                "  {start:<30}  {:>9}  {:>12}  {:>12}  {:>14}  {:>12}",
                b.count,
                number(b.min),
                number(b.max),
                number(b.sum),
                number(avg)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_in_the_prometheus_text_style() {
        let p = parse_line(r#"http_requests_total{method="GET", code="200",} 1027 1700000000123"#)
            .expect("parses");
        assert_eq!(p.name, "http_requests_total");
        assert_eq!(p.value, 1027.0);
        assert_eq!(p.labels.len(), 2);
        assert_eq!(
            (p.labels["method"].as_str(), p.labels["code"].as_str()),
            ("GET", "200")
        );
        let ts = p.timestamp.expect("timestamp");
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));

        let p = parse_line("temperature -21.5").expect("parses");
        assert_eq!(
            (p.name.as_str(), p.value, p.timestamp),
            ("temperature", -21.5, None)
        );
        assert!(p.labels.is_empty());

        let p = parse_line(r#"m{path="C:\\dir \"x\"\n"} NaN -1"#).expect("parses");
        assert_eq!(p.labels["path"], "C:\\dir \"x\"\n");
        assert!(p.value.is_nan());
        let ts = p.timestamp.expect("timestamp");
        assert_eq!((ts.seconds, ts.nanos), (-1, 999_000_000));
        assert_eq!(parse_line("m{} +Inf").expect("parses").value, f64::INFINITY);

        for bad in [
            "",
            "{a=\"b\"} 1",
            "m",
            "m{a=\"b\"}",
            "m abc",
            "m 1 1.5",
            "m 1 2 3",
            "m{a=b} 1",
            "m{a=\"b} 1",
            "m{a=\"b\" c=\"d\"} 1",
            "m{a=\"b\",a=\"c\"} 1",
            "m{a=\"\\t\"} 1",
            "m{a} 1",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn line_map_counts_skipped_lines() {
        // Lines: 1 comment, 2 point 0, 3 blank, 4 bad, 5 point 1, 6 point 2, 7 comment, 8 point 3.
        let mut map = LineMap::default();
        map.skipped(0, 1);
        map.skipped(1, 2);
        map.skipped(1, 3);
        map.skipped(3, 4);
        assert_eq!(
            (0..4).map(|i| map.line(i)).collect::<Vec<_>>(),
            [2, 5, 6, 8]
        );
        assert_eq!(LineMap::default().line(7), 8);
    }

    #[test]
    fn durations_and_steps_parse() {
        assert_eq!(parse_step("1m"), Ok(60));
        assert!(matches!(
            parse_when("2026-01-02T03:04:05Z"),
            Ok(When::At(_))
        ));
        assert!(matches!(parse_when("5m"), Ok(When::Ago(_))));
        assert_eq!(parse_label("k=v=w"), Ok(("k".into(), "v=w".into())));
        assert_eq!(
            series_text(
                "m",
                &[
                    ("b".to_string(), "x\"".to_string()),
                    ("a".into(), "1".into())
                ]
                .into_iter()
                .collect()
            ),
            r#"m{a="1",b="x\""}"#
        );
    }
}
