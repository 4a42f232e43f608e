//! Metrics: CollectMetrics (a client stream committed in small groups as it arrives) and
//! QueryMetrics (bucketed count/min/max/sum per series), and ListMetricSeries (the series'
//! names and labels, for a console to pick one).
//!
//! This module owns the metric rules: Prometheus names and label names, label canonical form,
//! limits, when a group commits, what a summary holds and how a query is bucketed. It never
//! writes SQL (the store does), and it never appends metrics to the event log: points are not
//! a stream with sequences, they are rows in their own tables, written through the store's
//! metadata pool so that the log writer is never held up by them.
//!
//! Semantics, in short (README "Metrics" has the long form):
//! - A point is valid when its name matches `[a-zA-Z_:][a-zA-Z0-9_:]*`, its label names match
//!   `[a-zA-Z_][a-zA-Z0-9_]*` and do not start with `__` (reserved), it has at most
//!   [`MAX_LABELS`] labels within the size caps and with no control character in a value, its
//!   value is finite, its timestamp (if any) is a valid protobuf Timestamp, and its series
//!   exists or fits under [`Config::max_series_per_metric`] (one name's series, server-wide;
//!   checked when the point's group commits, since only the store can count them exactly). A label with an empty value is the same as no label, as in
//!   Prometheus. A point without a timestamp gets the server's time at receipt.
//! - Valid points commit in groups: when [`Config::metrics_commit_ms`] has passed since the
//!   group's first point, or at [`GROUP_POINTS`] points, whichever comes first. A group's commit
//!   overlaps with receiving the next group.
//! - A cancelled (or broken) stream keeps every group that committed before it ended; the points
//!   of the group still open at that moment are not stored. A completed stream answers only
//!   after every valid point is durable, with exact counts and one summary per series.

use crate::cancel::ClientCancelled;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::proto::{
    ListMetricSeriesRequest, ListMetricSeriesResponse, MetricBucket, MetricData, MetricSeries,
    MetricSummary, MetricsCollectionResult, QueryMetricsRequest, QueryMetricsResponse, RecordError,
    micros_from_timestamp, timestamp_from_micros,
};
use crate::store::{KeyRange, Store};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

/// The first this many rejected points of a stream are listed in `errors`; the rest are counted.
pub const MAX_LISTED_ERRORS: usize = 100;
/// Longest metric name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Most labels on one point (or label matchers in one query).
pub const MAX_LABELS: usize = 32;
/// Longest label name, in bytes.
pub const MAX_LABEL_NAME_BYTES: usize = 128;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;
/// Most distinct series one CollectMetrics stream may write; a point of one more series is
/// rejected. Bounds the stream's memory and the size of its result (one summary per series).
pub const MAX_SERIES_PER_STREAM: usize = 10_000;
/// A group commits at this many points even before its time is up: bounds a stream's memory and
/// a transaction's length.
pub const GROUP_POINTS: usize = 5_000;
/// Series ids the server remembers across streams; past this the memory is cleared and ids are
/// looked up again (one read per series).
const MAX_CACHED_SERIES: usize = 100_000;

/// Bucket width when a query leaves `step_seconds` at 0.
pub const DEFAULT_STEP_SECONDS: u32 = 60;
/// How far back a query reaches when it leaves `start` unset.
pub const DEFAULT_RANGE: Duration = Duration::from_secs(3600);
/// Most buckets a query's range may be cut into (per series), as in Prometheus.
pub const MAX_BUCKETS_PER_SERIES: i64 = 11_000;
/// Most non-empty buckets in one answer (all series together): about 2 MB encoded, well under
/// the 4 MiB message limit of common gRPC clients.
pub const MAX_QUERY_BUCKETS: usize = 50_000;

/// Series in a ListMetricSeries answer when the request leaves `limit` at 0.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// Most series in one ListMetricSeries answer: a larger `limit` is lowered to this.
pub const MAX_LIST_LIMIT: u32 = 1000;

/// The range of a protobuf Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// The metrics capability.
#[derive(Debug, Clone)]
pub struct Metrics {
    log: Log,
    commit_after: Duration,
    /// Series ids by series key (see [`StreamSeries::key`]), shared by every stream, so that a
    /// known series costs no lookup. Only committed series are entered.
    cache: Arc<Mutex<HashMap<Arc<str>, i64>>>,
    /// Points received by every CollectMetrics call so far, valid or not, committed or not:
    /// `/metrics` shows it, so an operator (or a test) can see points arrive before a commit.
    pub points_received: Arc<AtomicU64>,
    /// Most series one metric name may have (`--max-series-per-metric`).
    max_series_per_metric: u64,
    /// Most series one query may match (`--max-query-series`).
    max_query_series: u64,
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b':'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'A'..=b'Z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A metric name must be present, short and follow Prometheus rules.
pub fn validate_metric_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("name is required"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(Error::invalid(format!(
            "name is longer than {MAX_NAME_BYTES} bytes"
        )));
    }
    if !is_metric_name(name) {
        return Err(Error::invalid(format!(
            "name {name:?} is not a valid metric name: it must match [a-zA-Z_:][a-zA-Z0-9_:]*"
        )));
    }
    Ok(())
}

fn validate_label_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("a label name is empty"));
    }
    if name.len() > MAX_LABEL_NAME_BYTES {
        return Err(Error::invalid(format!(
            "a label name is longer than {MAX_LABEL_NAME_BYTES} bytes"
        )));
    }
    if !is_label_name(name) {
        return Err(Error::invalid(format!(
            "label name {name:?} is not valid: it must match [a-zA-Z_][a-zA-Z0-9_]*"
        )));
    }
    if name.starts_with("__") {
        return Err(Error::invalid(format!(
            "label name {name:?} is reserved: names starting with __ are for internal use"
        )));
    }
    Ok(())
}

/// A label value is at most [`MAX_LABEL_VALUE_BYTES`] and holds no control character: such
/// characters only serve to make series that look alike in every display and log.
fn validate_label_value(name: &str, value: &str) -> Result<()> {
    if value.len() > MAX_LABEL_VALUE_BYTES {
        return Err(Error::invalid(format!(
            "the value of label {name} is longer than {MAX_LABEL_VALUE_BYTES} bytes"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "the value of label {name} contains a control character"
        )));
    }
    Ok(())
}

/// Validates a label set and returns its non-empty labels sorted by name: the canonical set.
/// A label with an empty value is dropped, as in Prometheus, where it means "no such label".
pub fn canonical_labels(labels: &HashMap<String, String>) -> Result<Vec<(&str, &str)>> {
    if labels.len() > MAX_LABELS {
        return Err(Error::invalid(format!(
            "{} labels; at most {MAX_LABELS} are allowed",
            labels.len()
        )));
    }
    let mut set = Vec::with_capacity(labels.len());
    for (name, value) in labels {
        validate_label_name(name)?;
        validate_label_value(name, value)?;
        if !value.is_empty() {
            set.push((name.as_str(), value.as_str()));
        }
    }
    set.sort_unstable_by_key(|&(name, _)| name);
    Ok(set)
}

/// Appends the canonical text of a sorted label set: a JSON object, e.g. `{"a":"1","b":"x"}`.
/// The same set always gives the same text, which is what the store matches series on.
pub fn write_labels(out: &mut String, labels: &[(&str, &str)]) {
    out.push('{');
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Label names are [a-zA-Z0-9_]: nothing to escape.
        out.push('"');
        out.push_str(name);
        out.push_str("\":\"");
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

/// Reads a canonical label text back into a map.
fn parse_labels(text: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(text)
        .map_err(|e| Error::Internal(format!("stored labels {text:?} are not valid: {e}")))
}

/// A protobuf Timestamp as microseconds, when it is a valid one (nanos in range, seconds
/// within years 1 to 9999).
fn timestamp_micros(ts: &prost_types::Timestamp, field: &str) -> Result<i64> {
    if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&ts.seconds) {
        return Err(Error::invalid(format!(
            "{field} is outside the years 0001 to 9999"
        )));
    }
    micros_from_timestamp(ts)
        .ok_or_else(|| Error::invalid(format!("{field} has nanos outside 0 to 999,999,999")))
}

/// Running figures of one series within one stream.
#[derive(Debug, Clone, Copy)]
struct Summary {
    count: u64,
    min: f64,
    max: f64,
    sum: f64,
    /// The value of the latest point by timestamp (the later one received on a tie), and
    /// its timestamp.
    last: f64,
    last_ts: i64,
}

impl Summary {
    fn new(ts: i64, value: f64) -> Self {
        Summary {
            count: 1,
            min: value,
            max: value,
            sum: value,
            last: value,
            last_ts: ts,
        }
    }

    fn add(&mut self, ts: i64, value: f64) {
        self.count += 1;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        self.sum += value;
        if ts >= self.last_ts {
            self.last = value;
            self.last_ts = ts;
        }
    }
}

/// A series one stream has written to.
#[derive(Debug)]
struct StreamSeries {
    /// The name followed by the canonical label text: `name{"a":"1"}`. A name cannot contain
    /// `{`, so the key is unambiguous. Shared with the server-wide id cache.
    key: Arc<str>,
    name_len: usize,
    id: Option<i64>,
    /// Its name had no room for one more series when it committed: every point of it is
    /// rejected, and it has no summary.
    refused: bool,
    summary: Summary,
}

impl StreamSeries {
    fn name(&self) -> &str {
        &self.key[..self.name_len]
    }

    fn labels(&self) -> &str {
        &self.key[self.name_len..]
    }
}

/// A point received and validated, not committed yet.
#[derive(Debug, Clone, Copy)]
struct PendingPoint {
    /// Index into [`Collector::series`].
    series: u32,
    ts_micros: i64,
    index: u64,
    value: f64,
}

/// What a group's commit task reports back.
struct Committed {
    /// `None` while the stream has stored nothing yet.
    collection_id: Option<i64>,
    /// Ids of the group's series that had none, as (index into [`Collector::series`], id).
    resolved: Vec<(u32, i64)>,
    /// The group's series that the cap on series per name refused (indexes into
    /// [`Collector::series`]), and their points, not stored, as (stream index, series).
    refused: Vec<u32>,
    refused_points: Vec<(u64, u32)>,
}

/// The state of one CollectMetrics stream.
struct Collector {
    store: Store,
    cache: Arc<Mutex<HashMap<Arc<str>, i64>>>,
    points_received: Arc<AtomicU64>,
    started_micros: i64,
    result: MetricsCollectionResult,
    series: Vec<StreamSeries>,
    by_key: HashMap<Arc<str>, u32>,
    /// Reused to build each point's series key without allocating.
    key_buf: String,
    pending: Vec<PendingPoint>,
    collection_id: Option<i64>,
    /// The group being committed while the next one fills; at most one at a time.
    in_flight: Option<JoinHandle<Result<Committed>>>,
    stored: u64,
    max_series_per_metric: u64,
}

impl Collector {
    fn new(metrics: &Metrics) -> Self {
        Collector {
            store: metrics.log.store.clone(),
            cache: metrics.cache.clone(),
            points_received: metrics.points_received.clone(),
            started_micros: now_micros(),
            result: MetricsCollectionResult::default(),
            series: Vec::new(),
            by_key: HashMap::new(),
            key_buf: String::new(),
            pending: Vec::with_capacity(GROUP_POINTS),
            collection_id: None,
            in_flight: None,
            stored: 0,
            max_series_per_metric: metrics.max_series_per_metric,
        }
    }

    /// Takes one received point: validates it, then queues it for the next commit or lists
    /// why it was rejected.
    fn receive(&mut self, point: MetricData) {
        let index = self.result.metrics_received;
        self.result.metrics_received += 1;
        self.points_received.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = self.accept(index, &point) {
            self.result.metrics_rejected += 1;
            // Every point listed so far came before this one: when the list is full, this one
            // is not among the first rejects.
            if self.result.errors.len() < MAX_LISTED_ERRORS {
                self.result.errors.push(RecordError {
                    index,
                    record_id: String::new(),
                    message: err.to_string(),
                });
            }
        }
    }

    /// Why a point of a refused series is rejected.
    fn series_cap_error(&self, name: &str) -> Error {
        Error::ResourceExhausted(format!(
            "metric {name} already has {} series, the most one name may have: this point's \
             labels would add another",
            self.max_series_per_metric
        ))
    }

    /// Rejects points found at commit (or at the flush after it): counts them and lists them
    /// among the first [`MAX_LISTED_ERRORS`] rejects in stream order. They may come before
    /// rejects already listed, so the list is sorted and cut again.
    fn reject_late(&mut self, points: &[(u64, u32)]) {
        if points.is_empty() {
            return;
        }
        self.result.metrics_rejected += points.len() as u64;
        self.stored -= points.len() as u64;
        for &(index, series) in points {
            let name = self.series[series as usize].name().to_string();
            let message = self.series_cap_error(&name).to_string();
            self.result.errors.push(RecordError {
                index,
                record_id: String::new(),
                message,
            });
        }
        self.result.errors.sort_by_key(|e| e.index);
        self.result.errors.truncate(MAX_LISTED_ERRORS);
    }

    fn accept(&mut self, index: u64, point: &MetricData) -> Result<()> {
        validate_metric_name(&point.name)?;
        let labels = canonical_labels(&point.labels)?;
        if !point.value.is_finite() {
            return Err(Error::invalid(format!(
                "value {} is not a finite number",
                point.value
            )));
        }
        let ts_micros = match &point.timestamp {
            Some(ts) => timestamp_micros(ts, "timestamp")?,
            None => now_micros(),
        };
        self.key_buf.clear();
        self.key_buf.push_str(&point.name);
        write_labels(&mut self.key_buf, &labels);
        let series = match self.by_key.get(self.key_buf.as_str()) {
            Some(&series) if self.series[series as usize].refused => {
                return Err(self.series_cap_error(&point.name));
            }
            Some(&series) => {
                self.series[series as usize]
                    .summary
                    .add(ts_micros, point.value);
                series
            }
            None => {
                if self.series.len() >= MAX_SERIES_PER_STREAM {
                    return Err(Error::ResourceExhausted(format!(
                        "this stream already wrote {MAX_SERIES_PER_STREAM} series; \
                         send more series over other streams"
                    )));
                }
                let key: Arc<str> = Arc::from(self.key_buf.as_str());
                let series = self.series.len() as u32;
                self.series.push(StreamSeries {
                    key: key.clone(),
                    name_len: point.name.len(),
                    id: None,
                    refused: false,
                    summary: Summary::new(ts_micros, point.value),
                });
                self.by_key.insert(key, series);
                series
            }
        };
        self.pending.push(PendingPoint {
            series,
            ts_micros,
            index,
            value: point.value,
        });
        Ok(())
    }

    /// Waits for the group being committed, if any, and takes in the ids it resolved.
    async fn settle(&mut self) -> Result<()> {
        let Some(task) = self.in_flight.take() else {
            return Ok(());
        };
        let committed = task
            .await
            .map_err(|e| Error::Internal(format!("metrics commit task failed: {e}")))??;
        self.collection_id = self.collection_id.or(committed.collection_id);
        for (series, id) in committed.resolved {
            self.series[series as usize].id = Some(id);
        }
        for &series in &committed.refused {
            self.series[series as usize].refused = true;
        }
        self.reject_late(&committed.refused_points);
        Ok(())
    }

    /// Hands the pending points to a commit task, once the previous group has committed. The
    /// next points are received while this group commits.
    async fn flush(&mut self) -> Result<()> {
        self.settle().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut points = std::mem::replace(&mut self.pending, Vec::with_capacity(GROUP_POINTS));
        self.stored += points.len() as u64;
        // Points that arrived before the commit that refused their series.
        let late: Vec<(u64, u32)> = points
            .iter()
            .filter(|p| self.series[p.series as usize].refused)
            .map(|p| (p.index, p.series))
            .collect();
        if !late.is_empty() {
            points.retain(|p| !self.series[p.series as usize].refused);
            self.reject_late(&late);
            if points.is_empty() {
                return Ok(());
            }
        }
        // Series that have no id yet: look in the shared cache first.
        let mut unknown: Vec<(u32, Arc<str>, usize)> = Vec::new();
        let mut seen = HashSet::new();
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            for point in &points {
                let series = &mut self.series[point.series as usize];
                if series.id.is_none() {
                    series.id = cache.get(&series.key).copied();
                    if series.id.is_none() && seen.insert(point.series) {
                        unknown.push((point.series, series.key.clone(), series.name_len));
                    }
                }
            }
        }
        let mut ids: Vec<Option<i64>> = self.series.iter().map(|s| s.id).collect();
        let store = self.store.clone();
        let cache = self.cache.clone();
        let collection_id = self.collection_id;
        let started_micros = self.started_micros;
        let max_series_per_metric = self.max_series_per_metric;
        self.in_flight = Some(tokio::spawn(async move {
            let mut resolved = Vec::with_capacity(unknown.len());
            let mut refused = Vec::new();
            if !unknown.is_empty() {
                let keys: Vec<(&str, &str)> = unknown
                    .iter()
                    .map(|(_, key, name_len)| (&key[..*name_len], &key[*name_len..]))
                    .collect();
                let new_ids = store
                    .metric_series_ids(&keys, max_series_per_metric)
                    .await?;
                let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() + new_ids.len() > MAX_CACHED_SERIES {
                    cache.clear();
                }
                for ((series, key, _), id) in unknown.iter().zip(new_ids) {
                    match id {
                        Some(id) => {
                            cache.insert(key.clone(), id);
                            ids[*series as usize] = Some(id);
                            resolved.push((*series, id));
                        }
                        None => refused.push(*series),
                    }
                }
            }
            let mut rows = Vec::with_capacity(points.len());
            let mut refused_points = Vec::new();
            for point in &points {
                // Every series of the group without an id was in `unknown`: one still
                // without an id now is one the cap refused.
                match ids[point.series as usize] {
                    Some(id) => rows.push((id, point.ts_micros, point.index as i64, point.value)),
                    None => refused_points.push((point.index, point.series)),
                }
            }
            // Only refused points: nothing to store, and no collection to create for them.
            let collection_id = if rows.is_empty() {
                collection_id
            } else {
                Some(
                    store
                        .insert_metric_points(collection_id, started_micros, &mut rows)
                        .await?,
                )
            };
            Ok(Committed {
                collection_id,
                resolved,
                refused,
                refused_points,
            })
        }));
        Ok(())
    }

    /// Commits everything received and waits until it is durable.
    async fn finish(&mut self) -> Result<()> {
        self.flush().await?;
        self.settle().await
    }

    /// The answer of a completed stream: counts and one summary per series, by name and labels.
    fn into_result(mut self) -> Result<MetricsCollectionResult> {
        self.series
            .sort_unstable_by(|a, b| (a.name(), a.labels()).cmp(&(b.name(), b.labels())));
        let mut summaries = Vec::with_capacity(self.series.len());
        for series in self.series.iter().filter(|s| !s.refused) {
            let s = series.summary;
            summaries.push(MetricSummary {
                name: series.name().to_string(),
                labels: parse_labels(series.labels())?.into_iter().collect(),
                count: s.count,
                min: s.min,
                max: s.max,
                sum: s.sum,
                last: s.last,
            });
        }
        let mut result = self.result;
        result.metrics_stored = self.stored;
        result.summaries = summaries;
        Ok(result)
    }
}

impl Metrics {
    pub fn new(log: Log, config: &Config) -> Self {
        Metrics {
            log,
            commit_after: Duration::from_millis(config.metrics_commit_ms),
            cache: Arc::default(),
            points_received: Arc::default(),
            max_series_per_metric: config.max_series_per_metric,
            max_query_series: config.max_query_series,
        }
    }

    /// CollectMetrics: validates each point as it arrives and commits valid ones in small
    /// groups while the stream is open; answers, once the client half-closes and every valid
    /// point is durable, with the counts and a summary per series.
    pub async fn collect<S>(
        &self,
        mut points: S,
        cancelled: ClientCancelled,
    ) -> Result<MetricsCollectionResult, Status>
    where
        S: Stream<Item = Result<MetricData, Status>> + Unpin,
    {
        let mut collector = Collector::new(self);
        // Armed when a group gets its first point; fires if the group is still open by then.
        let deadline = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(deadline);
        let shutdown = self.log.shutdown.cancelled();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    collector.finish().await?;
                    return Err(Status::unavailable(format!(
                        "server is shutting down; the {} valid points received so far are stored",
                        collector.stored
                    )));
                }
                _ = &mut deadline, if !collector.pending.is_empty() => collector.flush().await?,
                next = points.next() => match next {
                    None => break,
                    // A broken stream keeps the groups already committed, like a cancel.
                    Some(Err(status)) => return Err(status),
                    Some(Ok(point)) => {
                        collector.receive(point);
                        match collector.pending.len() {
                            GROUP_POINTS.. => collector.flush().await?,
                            1 => deadline.as_mut().reset(Instant::now() + self.commit_after),
                            _ => {}
                        }
                    }
                },
            }
        }
        // A client's cancel also ends the stream; only the flag tells it from a half-close.
        if cancelled.is_set() {
            return Err(Status::cancelled(
                "the stream was cancelled; the groups committed before it stay stored",
            ));
        }
        collector.finish().await?;
        let result = collector.into_result()?;
        tracing::info!(
            received = result.metrics_received,
            stored = result.metrics_stored,
            rejected = result.metrics_rejected,
            series = result.summaries.len(),
            "metrics collected"
        );
        Ok(result)
    }

    /// ListMetricSeries: the names and labels of the series whose name starts with
    /// `name_prefix` (every series for an empty one), by name then label text, bytewise; no
    /// buckets. A series that never got a point is left out, as QueryMetrics leaves it out.
    pub async fn list_series(
        &self,
        request: ListMetricSeriesRequest,
    ) -> Result<ListMetricSeriesResponse> {
        let prefix = request.name_prefix.as_str();
        if prefix.len() > MAX_NAME_BYTES {
            return Err(Error::invalid(format!(
                "name_prefix is longer than {MAX_NAME_BYTES} bytes"
            )));
        }
        // Every prefix of a valid name is itself a valid name, so a prefix that is not one
        // could match nothing: say so rather than answer an empty list.
        if !prefix.is_empty() && !is_metric_name(prefix) {
            return Err(Error::invalid(format!(
                "name_prefix {prefix:?} cannot begin a metric name: names match \
                 [a-zA-Z_:][a-zA-Z0-9_:]*"
            )));
        }
        let limit = match request.limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        };
        let rows = self
            .log
            .store
            .list_metric_series(&KeyRange::prefixed(prefix, None), limit)
            .await?;
        let series = rows
            .into_iter()
            .map(|(name, labels)| {
                Ok(MetricSeries {
                    name,
                    labels: parse_labels(&labels)?.into_iter().collect(),
                    buckets: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ListMetricSeriesResponse { series })
    }

    /// QueryMetrics: for each series called `name` whose labels include every given label
    /// (a given label with an empty value matches series without it), the non-empty buckets of
    /// `step_seconds` in `[start, end)`, aligned to `start`.
    pub async fn query(&self, request: QueryMetricsRequest) -> Result<QueryMetricsResponse> {
        validate_metric_name(&request.name)?;
        let matchers: Vec<(String, String)> = {
            if request.labels.len() > MAX_LABELS {
                return Err(Error::invalid(format!(
                    "{} label matchers; at most {MAX_LABELS} are allowed",
                    request.labels.len()
                )));
            }
            for (name, value) in &request.labels {
                validate_label_name(name)?;
                validate_label_value(name, value)?;
            }
            request.labels.into_iter().collect()
        };
        let end = match &request.end {
            Some(end) => timestamp_micros(end, "end")?,
            None => now_micros(),
        };
        let start = match &request.start {
            Some(start) => timestamp_micros(start, "start")?,
            None => end - DEFAULT_RANGE.as_micros() as i64,
        };
        if start >= end {
            return Err(Error::invalid("start must be before end"));
        }
        let step_seconds = match request.step_seconds {
            0 => DEFAULT_STEP_SECONDS,
            s => s,
        };
        let step = i64::from(step_seconds) * 1_000_000;
        // (end - start) / step, rounded up: a range of exactly 11,000 steps is allowed, one
        // microsecond more is not, as in Prometheus.
        let buckets = (end - start + step - 1) / step;
        if buckets > MAX_BUCKETS_PER_SERIES {
            return Err(Error::invalid(format!(
                "the range holds {buckets} buckets of {step_seconds} s; at most \
                 {MAX_BUCKETS_PER_SERIES} are allowed: use a larger step_seconds or a \
                 shorter range"
            )));
        }

        // Matched in SQL, one more than allowed: enough to tell "too many" without loading
        // every series of a popular name.
        let limit = self.max_query_series;
        let found = self
            .log
            .store
            .metric_series_matching(&request.name, &matchers, limit.saturating_add(1))
            .await?;
        if found.len() as u64 > limit {
            return Err(Error::ResourceExhausted(format!(
                "more than {limit} series match; at most {limit} may: give more labels"
            )));
        }
        let mut matched = Vec::with_capacity(found.len());
        for (series_id, labels_text) in found {
            matched.push((series_id, parse_labels(&labels_text)?));
        }
        let mut response = QueryMetricsResponse::default();
        let mut total = 0usize;
        for (series_id, labels) in matched {
            let left = MAX_QUERY_BUCKETS - total;
            let rows = self
                .log
                .store
                .metric_buckets(series_id, start, end, step, left as u32 + 1)
                .await?;
            if rows.len() > left {
                return Err(Error::ResourceExhausted(format!(
                    "the answer would hold more than {MAX_QUERY_BUCKETS} buckets: use a \
                     larger step_seconds, a shorter range or more labels"
                )));
            }
            if rows.is_empty() {
                continue;
            }
            total += rows.len();
            response.series.push(MetricSeries {
                name: request.name.clone(),
                labels: labels.into_iter().collect(),
                buckets: rows
                    .iter()
                    .map(|row| MetricBucket {
                        start: Some(timestamp_from_micros(start + row.bucket * step)),
                        count: row.count,
                        min: row.min,
                        max: row.max,
                        sum: row.sum,
                    })
                    .collect(),
            });
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_rules() {
        for good in ["a", "_", ":", "http_requests_total", "job:rate5m", "A9_:"] {
            assert!(validate_metric_name(good).is_ok(), "{good}");
        }
        for bad in ["", "9a", "a-b", "a b", "é", "a.b", "a{b}"] {
            assert!(validate_metric_name(bad).is_err(), "{bad}");
        }
        assert!(validate_metric_name(&"a".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(validate_metric_name(&"a".repeat(MAX_NAME_BYTES + 1)).is_err());
        for good in ["a", "_a", "code", "A_9", "_"] {
            assert!(validate_label_name(good).is_ok(), "{good}");
        }
        for bad in ["", "9", "a:b", "a-b", "__name__", "__x", "é"] {
            assert!(validate_label_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn canonical_labels_are_sorted_escaped_and_parse_back() {
        let labels: HashMap<String, String> = [("b", "say \"hi\"\\ é"), ("a", "1"), ("empty", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let set = canonical_labels(&labels).expect("valid");
        let mut text = String::new();
        write_labels(&mut text, &set);
        assert_eq!(text, r#"{"a":"1","b":"say \"hi\"\\ é"}"#);
        let back = parse_labels(&text).expect("parses");
        assert_eq!(back.len(), 2);
        assert_eq!(back["b"], labels["b"]);
        let mut none = String::new();
        write_labels(&mut none, &[]);
        assert_eq!(none, "{}");
        assert!(parse_labels(&none).expect("parses").is_empty());
        // Control characters are refused in values now; series stored before that still write
        // and parse back with them escaped.
        for bad in ["\n", "\t", "\u{1}", "\u{7f}", "\u{85}"] {
            let labels: HashMap<String, String> = [("k".to_string(), format!("a{bad}b"))].into();
            assert!(canonical_labels(&labels).is_err(), "{bad:?}");
        }
        let mut old = String::new();
        write_labels(&mut old, &[("k", "\n\t\u{1}")]);
        assert_eq!(old, r#"{"k":"\u000a\u0009\u0001"}"#);
        assert_eq!(parse_labels(&old).expect("parses")["k"], "\n\t\u{1}");
    }

    #[test]
    fn summary_last_follows_the_latest_timestamp() {
        let mut s = Summary::new(10, 1.0);
        s.add(5, 7.0);
        s.add(10, -2.0);
        assert_eq!(
            (s.count, s.min, s.max, s.sum, s.last, s.last_ts),
            (3, -2.0, 7.0, 6.0, -2.0, 10)
        );
    }
}
