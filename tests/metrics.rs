//! Metrics against the real server: points visible while their stream is open, exact bucket
//! figures, label matching, rejected points with exact counts and indexes, cancelled streams,
//! concurrent streams, large commits beside event publishes, shutdown and restart, and a table
//! of bad queries with exact codes. Every test talks to the server only through the generated
//! gRPC client.
//!
//! Every test runs on SQLite and on PostgreSQL (`store_tests!`: `<name>::sqlite`,
//! `<name>::postgres`; the PostgreSQL one skips when it is unreachable).

mod common;

use common::*;
use prost_types::Timestamp;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use streamhub::proto::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const SECOND: i64 = 1_000_000;
/// A round base time for tests with explicit timestamps: 2023-11-14T22:13:20Z.
const BASE: i64 = 1_700_000_000 * SECOND;

fn ts(micros: i64) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(SECOND),
        nanos: (micros.rem_euclid(SECOND) * 1000) as i32,
    }
}

fn micros(ts: &Option<Timestamp>) -> i64 {
    let ts = ts.as_ref().expect("a timestamp");
    ts.seconds * SECOND + i64::from(ts.nanos) / 1000
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn point(name: &str, pairs: &[(&str, &str)], value: f64, at: Option<i64>) -> MetricData {
    MetricData {
        name: name.to_string(),
        value,
        timestamp: at.map(ts),
        labels: labels(pairs),
    }
}

async fn collect(
    client: &mut Client,
    points: Vec<MetricData>,
) -> Result<MetricsCollectionResult, Status> {
    client
        .collect_metrics(tokio_stream::iter(points))
        .await
        .map(|r| r.into_inner())
}

/// A CollectMetrics call fed from a channel, running in its own task.
fn open_collect(
    client: &Client,
) -> (
    mpsc::Sender<MetricData>,
    tokio::task::JoinHandle<Result<MetricsCollectionResult, Status>>,
) {
    let (tx, rx) = mpsc::channel::<MetricData>(64);
    let mut call_client = client.clone();
    let call = tokio::spawn(async move {
        call_client
            .collect_metrics(ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner())
    });
    (tx, call)
}

fn query_req(
    name: &str,
    pairs: &[(&str, &str)],
    range: Option<(i64, i64)>,
    step_seconds: u32,
) -> QueryMetricsRequest {
    QueryMetricsRequest {
        name: name.to_string(),
        labels: labels(pairs),
        start: range.map(|(start, _)| ts(start)),
        end: range.map(|(_, end)| ts(end)),
        step_seconds,
    }
}

async fn query(client: &mut Client, request: QueryMetricsRequest) -> Vec<MetricSeries> {
    client
        .query_metrics(request.clone())
        .await
        .unwrap_or_else(|s| panic!("QueryMetrics {request:?} failed: {s:?}"))
        .into_inner()
        .series
}

/// A bucket as (start in microseconds, count, min, max, sum).
type B = (i64, u64, f64, f64, f64);

fn buckets(series: &MetricSeries) -> Vec<B> {
    series
        .buckets
        .iter()
        .map(|b| (micros(&b.start), b.count, b.min, b.max, b.sum))
        .collect()
}

/// A label set, sorted.
type Labels = Vec<(String, String)>;

/// Each series as its sorted labels and its buckets.
fn shape(series: &[MetricSeries]) -> Vec<(Labels, Vec<B>)> {
    series
        .iter()
        .map(|s| {
            let mut l: Vec<(String, String)> = s.labels.clone().into_iter().collect();
            l.sort();
            (l, buckets(s))
        })
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut l: Vec<(String, String)> = p
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    l
}

/// How many points of one series QueryMetrics sees in a range.
async fn stored_count(
    client: &mut Client,
    name: &str,
    p: &[(&str, &str)],
    range: (i64, i64),
) -> u64 {
    let step = ((range.1 - range.0) / SECOND) as u32 + 1;
    query(client, query_req(name, p, Some(range), step))
        .await
        .iter()
        .flat_map(|s| s.buckets.iter().map(|b| b.count))
        .sum()
}

/// Points in a full group: a group commits at this many even with its window still open.
const GROUP: u64 = streamhub::service::metrics::GROUP_POINTS as u64;

fn code<T>(result: Result<tonic::Response<T>, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

// ---------------------------------------------------------------------------------------------
// Visibility while the stream is open
// ---------------------------------------------------------------------------------------------

store_tests!(points_are_queryable_while_their_stream_is_open);
/// A point is visible to QueryMetrics while its stream stays open (within one commit window;
/// how soon is a figure of `streamhub bench metrics`, not asserted here); a point without a timestamp gets the server's time and shows up in a query with the
/// default range (the last hour).
async fn points_are_queryable_while_their_stream_is_open(kind: StoreKind) {
    // A deadline, not a latency bound: a point held until the stream ends never shows up (the
    // stream stays open throughout), so only a loaded machine decides how long this takes.
    const VISIBLE_LIMIT: Duration = Duration::from_secs(15);
    let server = TestServer::start_on(kind, |_| {}).await;
    within(30, "visible while open", async {
        let mut client = server.client().await;
        let (tx, call) = open_collect(&client);

        let sent_at = Instant::now();
        tx.send(point("open_gauge", &[("host", "a")], 42.5, Some(BASE)))
            .await
            .expect("the call takes points");
        let range = (BASE, BASE + SECOND);
        loop {
            let series = query(&mut client, query_req("open_gauge", &[], Some(range), 1)).await;
            if !series.is_empty() {
                assert_eq!(
                    shape(&series),
                    [(pairs(&[("host", "a")]), vec![(BASE, 1, 42.5, 42.5, 42.5)])]
                );
                break;
            }
            assert!(
                sent_at.elapsed() < VISIBLE_LIMIT,
                "the point was not visible within {VISIBLE_LIMIT:?} of being sent, its stream open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!call.is_finished(), "the stream is still open");

        // No timestamp: the server's time at receipt, found by a query with no range at all.
        let before = now_micros();
        tx.send(point("open_gauge", &[("host", "b")], 7.0, None))
            .await
            .expect("the call takes points");
        let sent_at = Instant::now();
        let found = loop {
            let series = query(
                &mut client,
                query_req("open_gauge", &[("host", "b")], None, 0),
            )
            .await;
            if let Some(s) = series.first() {
                break s.clone();
            }
            assert!(
                sent_at.elapsed() < VISIBLE_LIMIT,
                "the untimed point was not visible within {VISIBLE_LIMIT:?}, its stream open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let after = now_micros();
        assert_eq!(found.buckets.len(), 1);
        let bucket = &found.buckets[0];
        assert_eq!(
            (bucket.count, bucket.min, bucket.max, bucket.sum),
            (1, 7.0, 7.0, 7.0)
        );
        // Default step 60 s, buckets aligned to (now - 1 h): the point's bucket holds it.
        let start = micros(&bucket.start);
        assert!(
            start <= after && start + 60 * SECOND > before,
            "bucket at {start}"
        );
        assert!(!call.is_finished(), "the stream is still open");

        drop(tx);
        let result = call.await.expect("call task").expect("stream completes");
        assert_eq!(
            (
                result.metrics_received,
                result.metrics_stored,
                result.metrics_rejected
            ),
            (2, 2, 0)
        );
        assert_eq!(result.summaries.len(), 2);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Exact buckets and label matching
// ---------------------------------------------------------------------------------------------

store_tests!(buckets_are_exact_for_a_known_input);
/// Known points give exact buckets: boundaries belong to the later bucket, `end` is excluded,
/// empty buckets are left out, two points at one timestamp both count, buckets align to
/// `start`. Label matching: every given label must be equal, an empty value means "no such
/// label", and other names never match.
async fn buckets_are_exact_for_a_known_input(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    within(30, "exact buckets", async {
        let mut client = server.client().await;
        let name = "http_requests_total";
        let a = [("method", "GET"), ("code", "200")];
        let b = [("method", "GET"), ("code", "500")];
        let c = [("method", "POST")];
        let points = vec![
            point(name, &a, 100.0, Some(BASE - 1)), // before start: never counted
            point(name, &a, 1.0, Some(BASE)),
            point(name, &a, 4.0, Some(BASE + 3 * SECOND)),
            point(name, &a, 4.0, Some(BASE + 3 * SECOND)), // same timestamp: both count
            point(name, &a, -2.0, Some(BASE + 10 * SECOND - 1)),
            point(name, &a, 8.0, Some(BASE + 10 * SECOND)), // on a boundary: the later bucket
            point(name, &a, 0.5, Some(BASE + 35 * SECOND)),
            point(name, &a, 1000.0, Some(BASE + 40 * SECOND)), // at end: excluded
            point(name, &b, 3.0, Some(BASE + SECOND)),
            // An empty label value is no label: this is series c.
            point(
                name,
                &[("method", "POST"), ("code", "")],
                5.0,
                Some(BASE + 2 * SECOND),
            ),
            point("other_metric", &a, 9.0, Some(BASE + SECOND)),
        ];
        let result = collect(&mut client, points).await.expect("collect");
        assert_eq!(
            (
                result.metrics_received,
                result.metrics_stored,
                result.metrics_rejected
            ),
            (11, 11, 0)
        );
        assert!(result.errors.is_empty());

        let range = Some((BASE, BASE + 40 * SECOND));
        let a_buckets = vec![
            (BASE, 4, -2.0, 4.0, 7.0),
            (BASE + 10 * SECOND, 1, 8.0, 8.0, 8.0),
            (BASE + 30 * SECOND, 1, 0.5, 0.5, 0.5),
        ];
        let b_buckets = vec![(BASE, 1, 3.0, 3.0, 3.0)];
        let c_buckets = vec![(BASE, 1, 5.0, 5.0, 5.0)];

        // Exact labels: one series.
        let got = query(&mut client, query_req(name, &a, range, 10)).await;
        assert_eq!(shape(&got), [(pairs(&a), a_buckets.clone())]);
        assert!(got.iter().all(|s| s.name == name));
        // A subset of labels: every series that has them, in label order.
        let got = query(
            &mut client,
            query_req(name, &[("method", "GET")], range, 10),
        )
        .await;
        assert_eq!(
            shape(&got),
            [
                (pairs(&a), a_buckets.clone()),
                (pairs(&b), b_buckets.clone())
            ]
        );
        // No labels: every series of the name.
        let got = query(&mut client, query_req(name, &[], range, 10)).await;
        assert_eq!(
            shape(&got),
            [
                (pairs(&a), a_buckets.clone()),
                (pairs(&b), b_buckets.clone()),
                (pairs(&c), c_buckets.clone())
            ]
        );
        // An empty value: series without that label.
        let got = query(&mut client, query_req(name, &[("code", "")], range, 10)).await;
        assert_eq!(shape(&got), [(pairs(&c), c_buckets.clone())]);
        // No match, and an unknown name.
        assert!(
            query(
                &mut client,
                query_req(name, &[("method", "PUT")], range, 10)
            )
            .await
            .is_empty()
        );
        assert!(
            query(&mut client, query_req("no_such_metric", &[], range, 10))
                .await
                .is_empty()
        );

        // Wider buckets.
        let got = query(&mut client, query_req(name, &a, range, 20)).await;
        assert_eq!(
            shape(&got),
            [(
                pairs(&a),
                vec![
                    (BASE, 5, -2.0, 8.0, 15.0),
                    (BASE + 20 * SECOND, 1, 0.5, 0.5, 0.5)
                ]
            )]
        );
        // Buckets align to start, not to the epoch; the last one is cut at end.
        let got = query(
            &mut client,
            query_req(name, &a, Some((BASE + 5 * SECOND, BASE + 40 * SECOND)), 10),
        )
        .await;
        assert_eq!(
            shape(&got),
            [(
                pairs(&a),
                vec![
                    (BASE + 5 * SECOND, 2, -2.0, 8.0, 6.0),
                    (BASE + 35 * SECOND, 1, 0.5, 0.5, 0.5)
                ]
            )]
        );
        // A range that includes the point before BASE and the one at BASE + 40 s.
        let got = query(
            &mut client,
            query_req(name, &a, Some((BASE - 60 * SECOND, BASE + 60 * SECOND)), 60),
        )
        .await;
        assert_eq!(
            shape(&got),
            [(
                pairs(&a),
                vec![
                    (BASE - 60 * SECOND, 1, 100.0, 100.0, 100.0),
                    (BASE, 7, -2.0, 1000.0, 1015.5)
                ]
            )]
        );
        // A range with no points: no series at all.
        assert!(
            query(
                &mut client,
                query_req(name, &a, Some((BASE + 41 * SECOND, BASE + 50 * SECOND)), 10)
            )
            .await
            .is_empty()
        );

        // The stream's summaries: one per series, by name then labels, over this stream's points.
        let summaries: Vec<(String, Labels, u64, f64, f64, f64, f64)> = result
            .summaries
            .iter()
            .map(|s| {
                let mut l: Vec<(String, String)> = s.labels.clone().into_iter().collect();
                l.sort();
                (s.name.clone(), l, s.count, s.min, s.max, s.sum, s.last)
            })
            .collect();
        assert_eq!(
            summaries,
            [
                (name.to_string(), pairs(&a), 8, -2.0, 1000.0, 1115.5, 1000.0),
                (name.to_string(), pairs(&b), 1, 3.0, 3.0, 3.0, 3.0),
                (name.to_string(), pairs(&c), 1, 5.0, 5.0, 5.0, 5.0),
                ("other_metric".to_string(), pairs(&a), 1, 9.0, 9.0, 9.0, 9.0),
            ]
        );
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Rejected points
// ---------------------------------------------------------------------------------------------

store_tests!(invalid_points_are_rejected_counted_and_listed);
/// Every kind of invalid point is rejected, counted and listed with its index, while the valid
/// points around them are stored. The list stops at 100 errors; the count does not.
async fn invalid_points_are_rejected_counted_and_listed(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "rejects", async {
        let mut client = server.client().await;
        let t = Some(BASE);
        let long = "v".repeat(1025);
        let too_many: Vec<(String, String)> = (0..33)
            .map(|i| (format!("l{i}"), "x".to_string()))
            .collect();
        let too_many: Vec<(&str, &str)> = too_many
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let bad: Vec<(MetricData, &str)> = vec![
            (point("", &[], 1.0, t), "name is required"),
            (point("9lives", &[], 1.0, t), "not a valid metric name"),
            (point("a-b", &[], 1.0, t), "not a valid metric name"),
            (point("a b", &[], 1.0, t), "not a valid metric name"),
            (point("métrique", &[], 1.0, t), "not a valid metric name"),
            (
                point(&"n".repeat(257), &[], 1.0, t),
                "longer than 256 bytes",
            ),
            (
                point("ok_name", &[("", "x")], 1.0, t),
                "label name is empty",
            ),
            (point("ok_name", &[("1x", "x")], 1.0, t), "is not valid"),
            (point("ok_name", &[("a-b", "x")], 1.0, t), "is not valid"),
            (point("ok_name", &[("a:b", "x")], 1.0, t), "is not valid"),
            (point("ok_name", &[("__name__", "x")], 1.0, t), "reserved"),
            (point("ok_name", &[("__x", "x")], 1.0, t), "reserved"),
            (
                point("ok_name", &[(&"k".repeat(129), "x")], 1.0, t),
                "longer than 128 bytes",
            ),
            (
                point("ok_name", &[("k", &long)], 1.0, t),
                "longer than 1024 bytes",
            ),
            (point("ok_name", &too_many, 1.0, t), "at most 32"),
            (
                point("ok_name", &[("k", "line\nbreak")], 1.0, t),
                "control character",
            ),
            (point("ok_name", &[], f64::NAN, t), "not a finite number"),
            (
                point("ok_name", &[], f64::INFINITY, t),
                "not a finite number",
            ),
            (
                point("ok_name", &[], f64::NEG_INFINITY, t),
                "not a finite number",
            ),
            (
                MetricData {
                    timestamp: Some(Timestamp {
                        seconds: 1,
                        nanos: -1,
                    }),
                    ..point("ok_name", &[], 1.0, None)
                },
                "nanos",
            ),
            (
                MetricData {
                    timestamp: Some(Timestamp {
                        seconds: 1,
                        nanos: 1_000_000_000,
                    }),
                    ..point("ok_name", &[], 1.0, None)
                },
                "nanos",
            ),
            (
                MetricData {
                    timestamp: Some(Timestamp {
                        seconds: 253_402_300_800,
                        nanos: 0,
                    }),
                    ..point("ok_name", &[], 1.0, None)
                },
                "years 0001 to 9999",
            ),
        ];
        // Valid points between the bad ones: the edges of every rule.
        let good = [
            point("ok_name", &[], 1.0, t),
            point(":colon_first", &[], 2.0, t),
            point("_under", &[("_x", "y")], 3.0, t),
            point("ok_name", &[("k", &"v".repeat(1024))], 4.0, t),
            point(&"n".repeat(256), &[], 5.0, t),
            point("ok_name", &[("k", "ünïcödé \" \\ ")], 6.0, t),
            point("ok_name", &[], -0.0, t),
            point("ok_name", &[], f64::MAX, t),
            point("ok_name", &[], 1.0, Some(-62_135_596_800 * SECOND)),
        ];
        let mut points = Vec::new();
        let mut expected_errors = Vec::new();
        let mut good_iter = good.iter().cycle();
        for (i, (p, message)) in bad.iter().enumerate() {
            if i % 2 == 0 {
                points.push(good_iter.next().cloned().expect("cycle"));
            }
            expected_errors.push((points.len() as u64, *message));
            points.push(p.clone());
        }
        let total = points.len() as u64;
        let result = collect(&mut client, points).await.expect("collect");
        assert_eq!(
            (
                result.metrics_received,
                result.metrics_stored,
                result.metrics_rejected
            ),
            (total, total - bad.len() as u64, bad.len() as u64)
        );
        assert_eq!(
            result.errors.iter().map(|e| e.index).collect::<Vec<_>>(),
            expected_errors.iter().map(|(i, _)| *i).collect::<Vec<_>>()
        );
        for (error, (index, fragment)) in result.errors.iter().zip(&expected_errors) {
            assert!(
                error.message.contains(fragment),
                "point {index}: {:?} should mention {fragment:?}",
                error.message
            );
        }
        // Stored are exactly the valid ones. Series of one name come in label-text order, and
        // the label-less `ok_name` ({}) sorts last: its four points at BASE are one bucket.
        let stored: u64 = result.summaries.iter().map(|s| s.count).sum();
        assert_eq!(stored, total - bad.len() as u64);
        let plain = query(
            &mut client,
            query_req("ok_name", &[], Some((BASE, BASE + SECOND)), 1),
        )
        .await;
        let plain_counts: Vec<u64> = plain.iter().map(|s| s.buckets[0].count).collect();
        assert_eq!(plain_counts, [1, 1, 4], "{:?}", shape(&plain));
        let escaped = query(
            &mut client,
            query_req(
                "ok_name",
                &[("k", "ünïcödé \" \\ ")],
                Some((BASE, BASE + SECOND)),
                1,
            ),
        )
        .await;
        assert_eq!(escaped.len(), 1);
        assert_eq!(escaped[0].labels["k"], "ünïcödé \" \\ ");

        // 150 bad points: all counted, the first 100 listed.
        let many: Vec<MetricData> = (0..150).map(|_| point("bad-name", &[], 1.0, t)).collect();
        let result = collect(&mut client, many).await.expect("collect");
        assert_eq!(
            (
                result.metrics_received,
                result.metrics_stored,
                result.metrics_rejected
            ),
            (150, 0, 150)
        );
        assert_eq!(
            result.errors.iter().map(|e| e.index).collect::<Vec<_>>(),
            (0..100).collect::<Vec<u64>>()
        );
        assert!(result.summaries.is_empty());

        // One stream may write 10,000 series; a point of one more is rejected, the stream goes on.
        let mut wide: Vec<MetricData> = (0..10_001)
            .map(|i| point("wide", &[("i", &i.to_string())], 1.0, t))
            .collect();
        wide.push(point("wide", &[("i", "0")], 2.0, t));
        let result = collect(&mut client, wide).await.expect("collect");
        assert_eq!(
            (
                result.metrics_received,
                result.metrics_stored,
                result.metrics_rejected
            ),
            (10_002, 10_001, 1)
        );
        assert_eq!(result.errors.len(), 1);
        assert_eq!(result.errors[0].index, 10_000);
        assert!(
            result.errors[0].message.contains("10000 series"),
            "{}",
            result.errors[0].message
        );
        assert_eq!(result.summaries.len(), 10_000);
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Completed and cancelled streams
// ---------------------------------------------------------------------------------------------

store_tests!(cancelled_streams_keep_committed_points_and_completed_counts_are_exact);
/// A completed stream's counts and summaries are exact (checked against the points sent and
/// against QueryMetrics). A cancelled stream keeps the groups it committed before the cancel;
/// the group still open at the cancel is not stored.
async fn cancelled_streams_keep_committed_points_and_completed_counts_are_exact(kind: StoreKind) {
    // A commit window far longer than the test: a group commits only when it is full
    // (GROUP_POINTS) or its stream completes, never because time passed. So the points sent
    // right before a cancel are certainly still uncommitted, however slow the machine.
    let server = TestServer::start_on(kind, |c| c.metrics_commit_ms = 600_000).await;
    within(60, "cancel", async {
        let mut client = server.client().await;

        // 1. A completed stream of 12,345 points over 3 series: more than two full groups.
        let series = [("s", "0"), ("s", "1"), ("s", "2")];
        let mut points = Vec::new();
        let mut expected: HashMap<&str, (u64, f64, f64, f64, f64)> = HashMap::new();
        for i in 0..12_345i64 {
            let s = series[(i % 3) as usize];
            let value = ((i * 7919) % 1000) as f64 - 500.0;
            points.push(point("done_metric", &[s], value, Some(BASE + i * 1000)));
            let e = expected
                .entry(s.1)
                .or_insert((0, f64::MAX, f64::MIN, 0.0, 0.0));
            e.0 += 1;
            e.1 = e.1.min(value);
            e.2 = e.2.max(value);
            e.3 += value;
            e.4 = value;
        }
        let result = collect(&mut client, points).await.expect("collect");
        assert_eq!(
            (
                result.metrics_received,
                result.metrics_stored,
                result.metrics_rejected
            ),
            (12_345, 12_345, 0)
        );
        assert_eq!(result.summaries.len(), 3);
        for summary in &result.summaries {
            let e = expected[summary.labels["s"].as_str()];
            assert_eq!(
                (
                    summary.count,
                    summary.min,
                    summary.max,
                    summary.sum,
                    summary.last
                ),
                e,
                "{summary:?}"
            );
            let stored = stored_count(
                &mut client,
                "done_metric",
                &[("s", summary.labels["s"].as_str())],
                (BASE, BASE + 13 * SECOND),
            )
            .await;
            assert_eq!(stored, e.0);
        }

        // 2. A stream that commits one full group, then gets 10 more points and is aborted
        //    before its next commit: the group stays, the 10 are not stored.
        let range = (BASE, BASE + 100 * SECOND);
        let (tx, call) = open_collect(&client);
        for i in 0..GROUP as i64 {
            tx.send(point("cancel_metric", &[], 1.0, Some(BASE + i)))
                .await
                .expect("the call takes points");
        }
        poll_until(
            "the first (full) group committed",
            Duration::from_secs(30),
            || {
                let mut client = client.clone();
                async move {
                    match stored_count(&mut client, "cancel_metric", &[], range).await {
                        n if n >= GROUP => Ok(()),
                        n => Err(format!("{n} points stored")),
                    }
                }
            },
        )
        .await;
        for i in 0..10 {
            tx.send(point(
                "cancel_metric",
                &[],
                1.0,
                Some(BASE + 50 * SECOND + i),
            ))
            .await
            .expect("the call takes points");
        }
        call.abort();
        assert!(call.await.unwrap_err().is_cancelled());
        // The server's handler has ended (the call is no longer open): its open group went
        // with it, and nothing of this stream can commit any more.
        rpc_calls_closed(server.addr, "CollectMetrics").await;
        drop(tx);
        assert_eq!(
            stored_count(&mut client, "cancel_metric", &[], range).await,
            GROUP
        );

        // 3. The same with the call future dropped in place (a client-side timeout).
        let (tx, rx) = mpsc::channel::<MetricData>(64);
        for i in 0..20 {
            tx.send(point("timeout_metric", &[], 2.0, Some(BASE + i)))
                .await
                .expect("queued");
        }
        let mut call_client = client.clone();
        let timed_out = tokio::time::timeout(
            Duration::from_millis(300),
            call_client.collect_metrics(ReceiverStream::new(rx)),
        )
        .await;
        assert!(
            timed_out.is_err(),
            "without a half-close the call cannot finish"
        );
        rpc_calls_closed(server.addr, "CollectMetrics").await;
        drop(tx);
        assert_eq!(
            stored_count(&mut client, "timeout_metric", &[], range).await,
            0
        );

        // The server goes on: a new stream to the cancelled series completes normally.
        let result = collect(
            &mut client,
            vec![point("cancel_metric", &[], 3.0, Some(BASE + 99 * SECOND))],
        )
        .await
        .expect("collect after cancel");
        assert_eq!((result.metrics_received, result.metrics_stored), (1, 1));
        assert_eq!(
            stored_count(&mut client, "cancel_metric", &[], range).await,
            GROUP + 1
        );
    })
    .await;
    server.stop().await;
}

store_tests!(concurrent_streams_store_every_point_once);
/// Eight streams at once, all writing one shared series and one series each: every point is
/// stored exactly once and every answer is exact.
async fn concurrent_streams_store_every_point_once(kind: StoreKind) {
    const STREAMS: i64 = 8;
    const PER_STREAM: i64 = 6_000;
    let server = TestServer::start_on(kind, |c| c.metrics_commit_ms = 50).await;
    within(60, "concurrent", async {
        let client = server.client().await;
        let mut calls = tokio::task::JoinSet::new();
        for s in 0..STREAMS {
            let mut client = client.clone();
            calls.spawn(async move {
                let own = s.to_string();
                let points: Vec<MetricData> = (0..PER_STREAM)
                    .map(|i| {
                        let at = Some(BASE + i * 1000);
                        if i % 2 == 0 {
                            point("conc_metric", &[("shared", "yes")], 1.0, at)
                        } else {
                            point("conc_metric", &[("stream", &own)], 2.0, at)
                        }
                    })
                    .collect();
                collect(&mut client, points).await
            });
        }
        while let Some(done) = calls.join_next().await {
            let result = done.expect("task").expect("collect");
            assert_eq!(
                (
                    result.metrics_received,
                    result.metrics_stored,
                    result.metrics_rejected
                ),
                (PER_STREAM as u64, PER_STREAM as u64, 0)
            );
            let counts: Vec<u64> = result.summaries.iter().map(|s| s.count).collect();
            assert_eq!(counts, [PER_STREAM as u64 / 2; 2]);
        }
        let mut client = client.clone();
        let range = (BASE, BASE + 10 * SECOND);
        assert_eq!(
            stored_count(&mut client, "conc_metric", &[("shared", "yes")], range).await,
            (STREAMS * PER_STREAM / 2) as u64
        );
        let all = query(&mut client, query_req("conc_metric", &[], Some(range), 11)).await;
        assert_eq!(all.len(), STREAMS as usize + 1);
        let sums: Vec<(u64, f64)> = all
            .iter()
            .map(|s| (s.buckets[0].count, s.buckets[0].sum))
            .collect();
        let mut expected = vec![(PER_STREAM as u64 / 2, PER_STREAM as f64); STREAMS as usize];
        expected.push((
            (STREAMS * PER_STREAM / 2) as u64,
            (STREAMS * PER_STREAM / 2) as f64,
        ));
        // In label-text order {"shared":"yes"} comes before every {"stream":"…"}.
        expected.rotate_right(1);
        assert_eq!(sums, expected);
    })
    .await;
    server.stop().await;
}

store_tests!(large_metric_commits_and_event_publishes_share_the_writer);
/// Metric commits and the log's group commits share the store's writes (on SQLite they queue on
/// the writer thread between the log's group commits instead of taking SQLite's write lock
/// against them; on PostgreSQL they are transactions of their own beside the log's): while four
/// tasks keep publishing user events, one after another CollectMetrics calls of 5,000 points
/// (one full group, one commit each) all store every point, and every publish succeeds with its
/// user's next sequence, none skipped.
async fn large_metric_commits_and_event_publishes_share_the_writer(kind: StoreKind) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const PUBLISHERS: usize = 4;
    const BATCHES: i64 = 5;
    const SERIES: i64 = 10;
    let points_per_batch = GROUP as i64;
    let server = TestServer::start_on(kind, |_| {}).await;
    within(180, "publishes beside large metric commits", async {
        let client = server.client().await;
        let stop = Arc::new(AtomicBool::new(false));
        let published: Arc<Vec<AtomicU64>> =
            Arc::new((0..PUBLISHERS).map(|_| AtomicU64::new(0)).collect());
        let mut publishers = Vec::new();
        for p in 0..PUBLISHERS {
            let mut client = client.clone();
            let stop = stop.clone();
            let published = published.clone();
            publishers.push(tokio::spawn(async move {
                let user = format!("writer-share-{p}");
                let mut sequences = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let request = PublishUserEventRequest {
                        user_id: user.clone(),
                        r#type: UserEventType::Login as i32,
                        ..Default::default()
                    };
                    let event = client
                        .publish_user_event(request)
                        .await
                        .map_err(|s| {
                            format!("{user}: publish {} failed: {s:?}", sequences.len() + 1)
                        })?
                        .into_inner();
                    if event.user_id != user {
                        return Err(format!("{user}: answered for {}", event.user_id));
                    }
                    sequences.push(event.sequence);
                    published[p].fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, String>((user, sequences))
            }));
        }
        // Every publisher is running before the first metrics point is sent, and keeps running
        // until the last batch has been answered: each commit has appends queued around it.
        wait_for(
            "every publisher's first event",
            Duration::from_secs(30),
            || published.iter().all(|n| n.load(Ordering::Relaxed) > 0),
        )
        .await;
        let mut metrics_client = client.clone();
        let metrics = tokio::spawn(async move {
            let mut results = Vec::new();
            for b in 0..BATCHES {
                let points: Vec<MetricData> = (0..points_per_batch)
                    .map(|i| {
                        let series = (i % SERIES).to_string();
                        let at = Some(BASE + (b * points_per_batch + i) * 1000);
                        point("shared_writer", &[("s", &series)], 1.0, at)
                    })
                    .collect();
                results.push(collect(&mut metrics_client, points).await);
            }
            results
        });
        let results = metrics.await.expect("metrics task");
        stop.store(true, Ordering::Relaxed);
        for (b, result) in results.into_iter().enumerate() {
            let result = result.unwrap_or_else(|s| panic!("batch {b} failed: {s:?}"));
            assert_eq!(
                (
                    result.metrics_received,
                    result.metrics_stored,
                    result.metrics_rejected
                ),
                (points_per_batch as u64, points_per_batch as u64, 0),
                "batch {b}"
            );
            let counted: u64 = result.summaries.iter().map(|s| s.count).sum();
            assert_eq!(counted, points_per_batch as u64, "batch {b} summaries");
        }
        for publisher in publishers {
            let (user, sequences) = publisher
                .await
                .expect("publisher task")
                .unwrap_or_else(|e| panic!("{e}"));
            let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
            assert_eq!(
                sequences, expected,
                "{user}: sequences not contiguous from 1"
            );
        }
        let mut client = client.clone();
        let range = (BASE, BASE + (BATCHES * points_per_batch + 1) * 1000);
        assert_eq!(
            stored_count(&mut client, "shared_writer", &[], range).await,
            (BATCHES * points_per_batch) as u64
        );
    })
    .await;
    server.stop().await;
}

store_tests!(shutdown_commits_open_streams_and_restart_keeps_series);
/// At shutdown an open stream commits what it received and ends with UNAVAILABLE; after a
/// restart the points are there and new points join the same series.
async fn shutdown_commits_open_streams_and_restart_keeps_series(kind: StoreKind) {
    let server = TestServer::start_on(kind, |c| c.metrics_commit_ms = 60_000).await;
    let range = (BASE, BASE + 10 * SECOND);
    let home = server.home();
    within(30, "shutdown", async {
        let client = server.client().await;
        let (tx, call) = open_collect(&client);
        for i in 0..100 {
            tx.send(point("restart_metric", &[("k", "v")], 1.0, Some(BASE + i)))
                .await
                .expect("the call takes points");
        }
        // Wait until the server has received the points; the commit window is a minute, so
        // none is committed before the shutdown.
        wait_for_metrics(
            server.addr,
            "the server to receive 100 points",
            Duration::from_secs(20),
            |text| metric(text, "streamhub_metric_points_received_total") == Some(100),
        )
        .await;
        let stopped = tokio::spawn(server.stop());
        let status = call
            .await
            .expect("call task")
            .expect_err("shutdown ends the stream");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("100 valid points"),
            "{}",
            status.message()
        );
        drop(tx);
        stopped.await.expect("stop");
    })
    .await;
    let server = TestServer::start_at(home, |_| {}).await;
    within(30, "restart", async {
        let mut client = server.client().await;
        assert_eq!(
            stored_count(&mut client, "restart_metric", &[("k", "v")], range).await,
            100
        );
        let result = collect(
            &mut client,
            vec![point(
                "restart_metric",
                &[("k", "v")],
                5.0,
                Some(BASE + SECOND),
            )],
        )
        .await
        .expect("collect");
        assert_eq!(result.metrics_stored, 1);
        let got = query(
            &mut client,
            query_req("restart_metric", &[], Some(range), 10),
        )
        .await;
        assert_eq!(
            shape(&got),
            [(pairs(&[("k", "v")]), vec![(BASE, 101, 1.0, 5.0, 105.0)])]
        );
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Bad queries
// ---------------------------------------------------------------------------------------------

store_tests!(bad_queries_get_exact_codes);
/// Every malformed or oversized query gets its exact code.
async fn bad_queries_get_exact_codes(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "bad queries", async {
        let mut client = server.client().await;
        let hour = 3600 * SECOND;
        let good = query_req("q_metric", &[], Some((BASE, BASE + hour)), 60);
        let long = "v".repeat(1025);
        let many: Vec<(String, String)> = (0..33).map(|i| (format!("l{i}"), "x".into())).collect();
        let with = |f: &dyn Fn(&mut QueryMetricsRequest)| {
            let mut r = good.clone();
            f(&mut r);
            r
        };
        let cases: Vec<(&str, QueryMetricsRequest, Code)> = vec![
            ("valid", good.clone(), Code::Ok),
            (
                "defaults everywhere",
                query_req("q_metric", &[], None, 0),
                Code::Ok,
            ),
            (
                "empty name",
                with(&|r| r.name.clear()),
                Code::InvalidArgument,
            ),
            (
                "bad name",
                with(&|r| r.name = "9x".into()),
                Code::InvalidArgument,
            ),
            (
                "name with dash",
                with(&|r| r.name = "a-b".into()),
                Code::InvalidArgument,
            ),
            (
                "long name",
                with(&|r| r.name = "n".repeat(257)),
                Code::InvalidArgument,
            ),
            (
                "bad label name",
                with(&|r| r.labels = labels(&[("1x", "v")])),
                Code::InvalidArgument,
            ),
            (
                "empty label name",
                with(&|r| r.labels = labels(&[("", "v")])),
                Code::InvalidArgument,
            ),
            (
                "reserved label",
                with(&|r| r.labels = labels(&[("__name__", "v")])),
                Code::InvalidArgument,
            ),
            (
                "long label value",
                with(&|r| r.labels = labels(&[("k", &long)])),
                Code::InvalidArgument,
            ),
            (
                "33 labels",
                with(&|r| r.labels = many.iter().cloned().collect()),
                Code::InvalidArgument,
            ),
            (
                "start == end",
                with(&|r| r.end = Some(ts(BASE))),
                Code::InvalidArgument,
            ),
            (
                "start > end",
                with(&|r| r.end = Some(ts(BASE - 1))),
                Code::InvalidArgument,
            ),
            (
                "start in the future, end defaulted",
                with(&|r| {
                    r.start = Some(ts(now_micros() + hour));
                    r.end = None;
                }),
                Code::InvalidArgument,
            ),
            (
                "negative nanos",
                with(&|r| {
                    r.start = Some(Timestamp {
                        seconds: 1,
                        nanos: -1,
                    })
                }),
                Code::InvalidArgument,
            ),
            (
                "nanos too large",
                with(&|r| {
                    r.end = Some(Timestamp {
                        seconds: 1_800_000_000,
                        nanos: 1_000_000_000,
                    })
                }),
                Code::InvalidArgument,
            ),
            (
                "end past year 9999",
                with(&|r| {
                    r.end = Some(Timestamp {
                        seconds: 253_402_300_800,
                        nanos: 0,
                    })
                }),
                Code::InvalidArgument,
            ),
            (
                "11,000 buckets",
                with(&|r| {
                    r.end = Some(ts(BASE + 11_000 * SECOND));
                    r.step_seconds = 1;
                }),
                Code::Ok,
            ),
            (
                "11,001 buckets",
                with(&|r| {
                    r.end = Some(ts(BASE + 11_000 * SECOND + 1));
                    r.step_seconds = 1;
                }),
                Code::InvalidArgument,
            ),
            (
                "a year by the default step",
                with(&|r| {
                    r.end = Some(ts(BASE + 365 * 24 * hour));
                    r.step_seconds = 0;
                }),
                Code::InvalidArgument,
            ),
            (
                "the whole Timestamp range",
                with(&|r| {
                    r.start = Some(Timestamp {
                        seconds: -62_135_596_800,
                        nanos: 0,
                    });
                    r.end = Some(Timestamp {
                        seconds: 253_402_300_799,
                        nanos: 999_999_999,
                    });
                    r.step_seconds = u32::MAX;
                }),
                Code::Ok,
            ),
            (
                "the whole Timestamp range by the second",
                with(&|r| {
                    r.start = Some(Timestamp {
                        seconds: -62_135_596_800,
                        nanos: 0,
                    });
                    r.end = Some(Timestamp {
                        seconds: 253_402_300_799,
                        nanos: 999_999_999,
                    });
                    r.step_seconds = 1;
                }),
                Code::InvalidArgument,
            ),
            (
                "control character in a label value",
                with(&|r| r.labels = labels(&[("k", "a\nb")])),
                Code::InvalidArgument,
            ),
        ];
        for (what, request, expected) in &cases {
            let got = code(client.query_metrics(request.clone()).await);
            assert_eq!(got, *expected, "{what}");
        }

        // Too many matching series: 1,001 series of one name.
        let points: Vec<MetricData> = (0..1_001)
            .map(|i| point("q_wide", &[("i", &i.to_string())], 1.0, Some(BASE)))
            .collect();
        collect(&mut client, points).await.expect("collect");
        let status = client
            .query_metrics(query_req("q_wide", &[], Some((BASE, BASE + hour)), 60))
            .await
            .expect_err("1,001 series");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let one = query(
            &mut client,
            query_req("q_wide", &[("i", "1000")], Some((BASE, BASE + hour)), 60),
        )
        .await;
        assert_eq!(
            shape(&one),
            [(pairs(&[("i", "1000")]), vec![(BASE, 1, 1.0, 1.0, 1.0)])]
        );

        // Too many buckets in one answer: 5 series with a point every second for 10,001 s,
        // queried by the second, are 50,005 buckets; 4 of them are 40,004.
        let points: Vec<MetricData> = (0..5)
            .flat_map(|s| {
                (0..10_001).map(move |i| {
                    point(
                        "q_dense",
                        &[("s", &s.to_string())],
                        i as f64,
                        Some(BASE + i * SECOND),
                    )
                })
            })
            .collect();
        let result = collect(&mut client, points).await.expect("collect");
        assert_eq!(result.metrics_stored, 50_005);
        let range = Some((BASE, BASE + 10_001 * SECOND));
        let status = client
            .query_metrics(query_req("q_dense", &[], range, 1))
            .await
            .expect_err("50,005 buckets");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let got = query(&mut client, query_req("q_dense", &[("s", "4")], range, 1)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].buckets.len(), 10_001);
        assert_eq!(
            buckets(&got[0])[10_000],
            (BASE + 10_000 * SECOND, 1, 10_000.0, 10_000.0, 10_000.0)
        );
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Caps on label abuse and bounded queries
// ---------------------------------------------------------------------------------------------

store_tests!(label_caps_hold_at_their_limit_and_one_past_it);
/// Each label cap at its limit and one past it, in one stream: the points past a cap are
/// rejects with their exact index and message, the stream goes on, and exactly the others are
/// stored.
async fn label_caps_hold_at_their_limit_and_one_past_it(kind: StoreKind) {
    let server = TestServer::start_on(kind, |_| {}).await;
    within(60, "label caps", async {
        let mut client = server.client().await;
        let t = Some(BASE);
        let n_labels = |n: usize| -> Vec<(String, String)> {
            (0..n).map(|i| (format!("l{i:02}"), "x".into())).collect()
        };
        let borrow = |l: &[(String, String)]| -> Vec<(String, String)> { l.to_vec() };
        let with_labels = |l: Vec<(String, String)>, value: f64| MetricData {
            name: "cap_metric".into(),
            value,
            timestamp: t.map(ts),
            labels: l.into_iter().collect(),
        };
        let one = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        // (point, the exact reject message, or None when it is stored)
        let cases: Vec<(MetricData, Option<String>)> = vec![
            (with_labels(borrow(&n_labels(32)), 1.0), None),
            (
                with_labels(borrow(&n_labels(33)), 2.0),
                Some("33 labels; at most 32 are allowed".into()),
            ),
            (with_labels(one("k", &"v".repeat(1024)), 3.0), None),
            (
                with_labels(one("k", &"v".repeat(1025)), 4.0),
                Some("the value of label k is longer than 1024 bytes".into()),
            ),
            // 1024 bytes of two-byte characters: at the limit in bytes.
            (with_labels(one("k", &"é".repeat(512)), 5.0), None),
            (
                with_labels(one("k", "tab\there"), 6.0),
                Some("the value of label k contains a control character".into()),
            ),
            (
                with_labels(one("k", "del\u{7f}"), 7.0),
                Some("the value of label k contains a control character".into()),
            ),
            (
                with_labels(one("k", "c1\u{85}"), 8.0),
                Some("the value of label k contains a control character".into()),
            ),
            (
                with_labels(one("k\n", "v"), 9.0),
                Some(
                    "label name \"k\\n\" is not valid: it must match [a-zA-Z_][a-zA-Z0-9_]*".into(),
                ),
            ),
            (
                MetricData {
                    name: "cap\u{1}metric".into(),
                    ..with_labels(Vec::new(), 10.0)
                },
                Some(
                    "name \"cap\\u{1}metric\" is not a valid metric name: it must match \
                     [a-zA-Z_:][a-zA-Z0-9_:]*"
                        .into(),
                ),
            ),
            (with_labels(one("k", "plain"), 11.0), None),
        ];
        let points: Vec<MetricData> = cases.iter().map(|(p, _)| p.clone()).collect();
        let result = collect(&mut client, points).await.expect("collect");
        let expected_errors: Vec<(u64, String)> = cases
            .iter()
            .enumerate()
            .filter_map(|(i, (_, m))| m.clone().map(|m| (i as u64, m)))
            .collect();
        let got_errors: Vec<(u64, String)> = result
            .errors
            .iter()
            .map(|e| (e.index, e.message.clone()))
            .collect();
        assert_eq!(got_errors, expected_errors);
        let stored = cases.iter().filter(|(_, m)| m.is_none()).count() as u64;
        assert_eq!(
            (
                result.metrics_received,
                result.metrics_stored,
                result.metrics_rejected
            ),
            (cases.len() as u64, stored, cases.len() as u64 - stored)
        );
        // Exactly the stored points, one series each, by their values.
        let got = query(
            &mut client,
            query_req("cap_metric", &[], Some((BASE, BASE + SECOND)), 1),
        )
        .await;
        let mut values: Vec<f64> = got.iter().map(|s| s.buckets[0].sum).collect();
        values.sort_by(f64::total_cmp);
        assert_eq!(values, [1.0, 3.0, 5.0, 11.0], "{:?}", shape(&got));
        let wide = got
            .iter()
            .find(|s| s.buckets[0].sum == 1.0)
            .expect("the 32-label series");
        assert_eq!(wide.labels.len(), 32);
    })
    .await;
    server.stop().await;
}

store_tests!(a_metric_holds_at_most_its_series_cap);
/// `--max-series-per-metric` counts one name's series server-wide: with a cap of 3, the fourth
/// series of a name is a reject (each of its points, with its index), in this stream and in
/// later ones, while the existing series and other names go on being stored.
async fn a_metric_holds_at_most_its_series_cap(kind: StoreKind) {
    let server = TestServer::start_on(kind, |c| c.max_series_per_metric = 3).await;
    within(60, "series cap", async {
        let mut client = server.client().await;
        let t = Some(BASE);
        let p = |s: &str, v: f64| point("capped", &[("s", s)], v, t);
        let refused =
            "metric capped already has 3 series, the most one name may have: this point's \
             labels would add another";
        let result = collect(
            &mut client,
            vec![
                p("0", 1.0),                         // 0
                p("1", 2.0),                         // 1
                p("2", 3.0),                         // 2: the third series, at the cap
                p("3", 4.0),                         // 3: a fourth: reject
                point("other", &[("s", "3")], 5.0, t), // 4: another name
                p("3", 6.0),                         // 5: the fourth again: reject
                p("0", 7.0),                         // 6: an existing series
            ],
        )
        .await
        .expect("collect");
        assert_eq!(
            (
                result.metrics_received,
                result.metrics_stored,
                result.metrics_rejected
            ),
            (7, 5, 2)
        );
        let errors: Vec<(u64, &str)> = result
            .errors
            .iter()
            .map(|e| (e.index, e.message.as_str()))
            .collect();
        assert_eq!(errors, [(3, refused), (5, refused)]);
        let summaries: Vec<(&str, &str, u64)> = result
            .summaries
            .iter()
            .map(|s| (s.name.as_str(), s.labels["s"].as_str(), s.count))
            .collect();
        assert_eq!(
            summaries,
            [("capped", "0", 2), ("capped", "1", 1), ("capped", "2", 1), ("other", "3", 1)]
        );

        // A later stream: the cap still holds, existing series still take points.
        let result = collect(&mut client, vec![p("4", 8.0), p("1", 9.0)])
            .await
            .expect("collect");
        assert_eq!(
            (result.metrics_stored, result.metrics_rejected),
            (1, 1),
            "{result:?}"
        );
        assert_eq!(result.errors[0].index, 0);
        assert_eq!(result.errors[0].message, refused);

        let got = query(
            &mut client,
            query_req("capped", &[], Some((BASE, BASE + SECOND)), 1),
        )
        .await;
        assert_eq!(
            shape(&got),
            [
                (pairs(&[("s", "0")]), vec![(BASE, 2, 1.0, 7.0, 8.0)]),
                (pairs(&[("s", "1")]), vec![(BASE, 2, 2.0, 9.0, 11.0)]),
                (pairs(&[("s", "2")]), vec![(BASE, 1, 3.0, 3.0, 3.0)]),
            ]
        );
    })
    .await;
    server.stop().await;
}

store_tests!(a_query_matches_at_most_max_query_series);
/// `--max-query-series`: with a limit of 3, a query matching 3 series answers, one matching 4
/// gets RESOURCE_EXHAUSTED; matchers (an exact value, or an empty value for "no such label")
/// are applied before the limit.
async fn a_query_matches_at_most_max_query_series(kind: StoreKind) {
    let server = TestServer::start_on(kind, |c| c.max_query_series = 3).await;
    within(60, "query series", async {
        let mut client = server.client().await;
        let t = Some(BASE);
        let points = vec![
            point("qs", &[("i", "0"), ("g", "a")], 0.0, t),
            point("qs", &[("i", "1"), ("g", "a")], 1.0, t),
            point("qs", &[("i", "2"), ("g", "a")], 2.0, t),
            point("qs", &[("i", "3")], 3.0, t),
        ];
        collect(&mut client, points).await.expect("collect");
        let range = Some((BASE, BASE + SECOND));
        // (matchers, the sums of the series matched, or the code)
        type Case<'a> = (&'a [(&'a str, &'a str)], Result<Vec<f64>, Code>);
        let cases: Vec<Case> = vec![
            (&[("g", "a")], Ok(vec![0.0, 1.0, 2.0])),
            (&[("g", "")], Ok(vec![3.0])),
            (&[("i", "3"), ("g", "")], Ok(vec![3.0])),
            (&[("i", "3"), ("g", "a")], Ok(vec![])),
            (&[("i", "")], Ok(vec![])),
            (&[], Err(Code::ResourceExhausted)),
            (&[("nope", "")], Err(Code::ResourceExhausted)),
        ];
        for (matchers, expected) in cases {
            let got = client
                .query_metrics(query_req("qs", matchers, range, 1))
                .await
                .map(|r| {
                    r.into_inner()
                        .series
                        .iter()
                        .map(|s| s.buckets[0].sum)
                        .collect::<Vec<f64>>()
                })
                .map_err(|s| {
                    if s.code() == Code::ResourceExhausted {
                        assert_eq!(
                            s.message(),
                            "more than 3 series match; at most 3 may: give more labels"
                        );
                    }
                    s.code()
                });
            assert_eq!(got, expected, "{matchers:?}");
        }
    })
    .await;
    server.stop().await;
}
