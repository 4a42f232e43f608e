//! ProcessLiveData against the real server: statistics against a from-scratch reference (with
//! window eviction), anomaly flags, bad inputs that do not end the stream, order with many inputs
//! in flight, the distinct-key limit, per-stream windows, backpressure from a client that stops
//! reading, and shutdown. Every test talks to the server only through the generated gRPC client
//! and asserts exact outcomes: ids, counts, flags, error codes and status codes.

mod common;

use common::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use streamhub::proto::processing_result::Outcome;
use streamhub::proto::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn input(id: impl Into<String>, key: &str, value: f64) -> DataInput {
    DataInput {
        id: id.into(),
        key: key.into(),
        value,
        timestamp: None,
    }
}

/// Sends `inputs` on one stream and reads every result; returns them with the status the stream
/// ended with (`None` for OK).
async fn run(
    client: &mut Client,
    inputs: Vec<DataInput>,
) -> (Vec<ProcessingResult>, Option<Status>) {
    let mut stream = client
        .process_live_data(tokio_stream::iter(inputs))
        .await
        .expect("ProcessLiveData opens")
        .into_inner();
    let mut results = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(result)) => results.push(result),
            Ok(None) => return (results, None),
            Err(status) => return (results, Some(status)),
        }
    }
}

fn stats(result: &ProcessingResult) -> &WindowStats {
    match &result.outcome {
        Some(Outcome::Stats(stats)) => stats,
        other => panic!("input {:?}: expected stats, got {other:?}", result.input_id),
    }
}

fn error(result: &ProcessingResult) -> &ProcessingError {
    match &result.outcome {
        Some(Outcome::Error(error)) => error,
        other => panic!(
            "input {:?}: expected an error, got {other:?}",
            result.input_id
        ),
    }
}

/// The statistics by their definition, recomputed from scratch for every input: population
/// stddev; z against the window before the value, 0 when that is empty or has no spread.
struct Reference {
    window: usize,
    anomaly_z: f64,
    by_key: HashMap<String, Vec<f64>>,
}

fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

impl Reference {
    fn new(window: usize, anomaly_z: f64) -> Self {
        Reference {
            window,
            anomaly_z,
            by_key: HashMap::new(),
        }
    }

    fn observe(&mut self, key: &str, value: f64) -> WindowStats {
        let window = self.window;
        let all = self.by_key.entry(key.to_string()).or_default();
        let before = &all[all.len().saturating_sub(window)..];
        let z_score = if before.is_empty() {
            0.0
        } else {
            let (mean, sd) = mean_sd(before);
            if sd == 0.0 { 0.0 } else { (value - mean) / sd }
        };
        all.push(value);
        let now = &all[all.len().saturating_sub(window)..];
        let (mean, stddev) = mean_sd(now);
        WindowStats {
            count: now.len() as u64,
            mean,
            min: now.iter().copied().fold(f64::INFINITY, f64::min),
            max: now.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            stddev,
            z_score,
            anomaly: z_score.abs() > self.anomaly_z,
        }
    }
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-9 * want.abs().max(1.0)
}

/// Exact count, min, max and flag; mean, stddev and z up to rounding.
fn assert_stats(what: &str, got: &WindowStats, want: &WindowStats) {
    assert_eq!(got.count, want.count, "{what}: count of {got:?}");
    assert_eq!(got.min, want.min, "{what}: min of {got:?}");
    assert_eq!(got.max, want.max, "{what}: max of {got:?}");
    assert!(
        close(got.mean, want.mean),
        "{what}: mean {got:?} vs {want:?}"
    );
    assert!(
        close(got.stddev, want.stddev),
        "{what}: stddev {got:?} vs {want:?}"
    );
    assert!(
        close(got.z_score, want.z_score),
        "{what}: z {got:?} vs {want:?}"
    );
    assert_eq!(
        got.anomaly, want.anomaly,
        "{what}: anomaly {got:?} vs {want:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_match_a_reference_with_window_eviction() {
    let server = TestServer::start_with(|c| c.live_window = 5).await;
    within(30, "statistics", async {
        let mut c = server.client().await;

        // By hand first: 1..=6 on one key with a window of 5.
        let inputs: Vec<_> = (1..=6)
            .map(|v| input(format!("h{v}"), "hand", v as f64))
            .collect();
        let (results, end) = run(&mut c, inputs).await;
        assert!(end.is_none(), "half-close ends with OK: {end:?}");
        assert_eq!(results.len(), 6);
        let first = stats(&results[0]);
        assert_eq!(
            (
                first.count,
                first.mean,
                first.min,
                first.max,
                first.stddev,
                first.z_score
            ),
            (1, 1.0, 1.0, 1.0, 0.0, 0.0)
        );
        // The 6th value evicts the 1st: window {2,3,4,5,6}; z of 6 against {1,2,3,4,5}, whose
        // mean is 3 and population stddev √2.
        let sixth = stats(&results[5]);
        assert_eq!((sixth.count, sixth.min, sixth.max), (5, 2.0, 6.0));
        assert!(close(sixth.mean, 4.0), "{sixth:?}");
        assert!(close(sixth.stddev, 2f64.sqrt()), "{sixth:?}");
        assert!(close(sixth.z_score, 3.0 / 2f64.sqrt()), "{sixth:?}");
        assert!(!sixth.anomaly);

        // Then a longer pseudo-random sequence over three interleaved keys, each evicting many
        // times, with ties, negatives and a plateau, against the reference.
        let mut rng = XorShift::new(7);
        let keys = ["alpha", "beta", "gamma"];
        let mut inputs = Vec::new();
        for i in 0..600u64 {
            let key = keys[rng.below(3) as usize];
            let value = match i {
                200..=260 => 7.25, // a plateau: stddev exactly 0 once it fills the window
                _ => (rng.below(2001) as f64 - 1000.0) / 8.0,
            };
            inputs.push(input(format!("r{i}"), key, value));
        }
        let mut reference = Reference::new(5, 3.0);
        let (results, end) = run(&mut c, inputs.clone()).await;
        assert!(end.is_none(), "{end:?}");
        assert_eq!(results.len(), inputs.len());
        for (sent, got) in inputs.iter().zip(&results) {
            assert_eq!((&got.input_id, &got.key), (&sent.id, &sent.key));
            let want = reference.observe(&sent.key, sent.value);
            assert_stats(&sent.id, stats(got), &want);
        }
        // The plateau really reached a zero spread in some key's window.
        assert!(
            results
                .iter()
                .any(|r| stats(r).count == 5 && stats(r).stddev == 0.0)
        );
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_are_flagged_on_a_crafted_series() {
    let server = TestServer::start().await;
    within(30, "anomalies", async {
        let mut c = server.client().await;
        // 10, 12, 10, 12, …: mean 11, population stddev 1.
        let mut values: Vec<f64> = (0..20)
            .map(|i| if i % 2 == 0 { 10.0 } else { 12.0 })
            .collect();
        values.push(15.0); // #20: z = +4 → anomaly
        values.push(11.0); // #21: near the mean → no
        values.push(-30.0); // #22: far below → anomaly
        values.push(11.5); // #23: no
        let inputs: Vec<_> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| input(i.to_string(), "sensor", v))
            .collect();
        let (results, end) = run(&mut c, inputs).await;
        assert!(end.is_none(), "{end:?}");
        let flagged: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| stats(r).anomaly)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(flagged, vec![20, 22]);
        assert!(close(stats(&results[20]).z_score, 4.0), "{:?}", results[20]);
        assert!(stats(&results[22]).z_score < -3.0, "{:?}", results[22]);
        let mut reference = Reference::new(100, 3.0);
        for (i, (v, got)) in values.iter().zip(&results).enumerate() {
            assert_stats(&i.to_string(), stats(got), &reference.observe("sensor", *v));
        }

        // A constant window has no spread: a jump from it gets z 0 and no flag (documented).
        let inputs = vec![
            input("c1", "flat", 5.0),
            input("c2", "flat", 5.0),
            input("c3", "flat", 5.0),
            input("c4", "flat", 1e9),
        ];
        let (results, _) = run(&mut c, inputs).await;
        let jump = stats(&results[3]);
        assert_eq!((jump.count, jump.z_score, jump.anomaly), (4, 0.0, false));
        assert_eq!((jump.min, jump.max), (5.0, 1e9));
    })
    .await;
    server.stop().await;

    // The threshold is the configured one: z = 2 is an anomaly above 1.5, not above 3.
    let server = TestServer::start_with(|c| c.live_anomaly_z = 1.5).await;
    within(30, "threshold", async {
        let mut c = server.client().await;
        let mut inputs: Vec<_> = (0..20)
            .map(|i| input(i.to_string(), "s", if i % 2 == 0 { 10.0 } else { 12.0 }))
            .collect();
        inputs.push(input("z2", "s", 13.0));
        let (results, _) = run(&mut c, inputs).await;
        let last = stats(&results[20]);
        assert!(close(last.z_score, 2.0), "{last:?}");
        assert!(last.anomaly);
        assert!(results[..20].iter().all(|r| !stats(r).anomaly));
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Bad inputs and limits
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_error_results_and_the_stream_goes_on() {
    let server = TestServer::start_with(|c| c.live_window = 4).await;
    within(30, "bad inputs", async {
        let mut c = server.client().await;
        let long_key = "k".repeat(129);
        let max_key = "m".repeat(128);
        // (key, value, expected error code, or None for a good input)
        let table: Vec<(&str, f64, Option<&str>)> = vec![
            ("k", 1.0, None),
            ("", 1.0, Some("INVALID_KEY")),
            ("k", 2.0, None),
            (&long_key, 1.0, Some("INVALID_KEY")),
            ("a\nb", 1.0, Some("INVALID_KEY")),
            ("k", f64::NAN, Some("INVALID_VALUE")),
            ("k", 3.0, None),
            ("k", f64::INFINITY, Some("INVALID_VALUE")),
            ("k", f64::NEG_INFINITY, Some("INVALID_VALUE")),
            ("k", 1e101, Some("INVALID_VALUE")),
            ("k", -1e101, Some("INVALID_VALUE")),
            ("", f64::NAN, Some("INVALID_KEY")), // the key is checked first
            ("k", 4.0, None),
            ("k", 5.0, None), // evicts 1: the bad ones never took a place in the window
            (&max_key, 1e100, None),
            (&max_key, -1e100, None),
            ("k", 6.0, None),
        ];
        let inputs: Vec<_> = table
            .iter()
            .enumerate()
            .map(|(i, (key, value, _))| input(format!("in-{i}"), key, *value))
            .collect();
        let (results, end) = run(&mut c, inputs).await;
        assert!(end.is_none(), "bad inputs do not end the stream: {end:?}");
        assert_eq!(results.len(), table.len());

        let mut reference = Reference::new(4, 3.0);
        for (i, ((key, value, code), got)) in table.iter().zip(&results).enumerate() {
            assert_eq!(got.input_id, format!("in-{i}"));
            assert_eq!(got.key, *key, "the key is echoed, even a bad one");
            match code {
                Some(code) => {
                    let e = error(got);
                    assert_eq!(e.code, *code, "input {i} ({key:?}, {value}): {e:?}");
                    assert!(!e.message.is_empty());
                }
                None => assert_stats(&got.input_id, stats(got), &reference.observe(key, *value)),
            }
        }
        assert_eq!(error(&results[1]).message, "key is required");
        assert_eq!(error(&results[5]).message, "value is NaN");
        let last = stats(&results[16]);
        assert_eq!((last.count, last.min, last.max), (4, 3.0, 6.0));
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_keys_ends_the_stream_after_the_earlier_results() {
    let server = TestServer::start_with(|c| c.live_max_keys = 3).await;
    within(30, "keys", async {
        let mut c = server.client().await;
        let inputs = vec![
            input("1", "a", 1.0),
            input("2", "b", 1.0),
            input("3", "", 1.0), // invalid: not a key, does not count
            input("4", "c", 1.0),
            input("5", "a", 2.0),
            input("6", "c", 2.0),
            input("7", "d", 1.0), // the 4th distinct key
            input("8", "a", 3.0),
        ];
        let (results, end) = run(&mut c, inputs).await;
        let ids: Vec<&str> = results.iter().map(|r| r.input_id.as_str()).collect();
        assert_eq!(ids, ["1", "2", "3", "4", "5", "6"]);
        assert_eq!(error(&results[2]).code, "INVALID_KEY");
        assert_eq!(stats(&results[4]).count, 2);
        let end = end.expect("the stream ends with a status");
        assert_eq!(end.code(), Code::ResourceExhausted, "{end:?}");
        assert_eq!(end.message(), "more than 3 distinct keys in one stream");

        // The limit is per stream: a new stream starts with no keys.
        let (results, end) = run(&mut c, vec![input("1", "x", 1.0), input("2", "y", 1.0)]).await;
        assert!(end.is_none(), "{end:?}");
        assert_eq!(results.len(), 2);
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_belong_to_their_stream() {
    let server = TestServer::start().await;
    within(30, "per stream", async {
        let mut one = server.client().await;
        let mut two = server.client().await;
        let (tx1, rx1) = mpsc::channel(8);
        let (tx2, rx2) = mpsc::channel(8);
        let mut s1 = one
            .process_live_data(ReceiverStream::new(rx1))
            .await
            .unwrap()
            .into_inner();
        let mut s2 = two
            .process_live_data(ReceiverStream::new(rx2))
            .await
            .unwrap()
            .into_inner();
        for v in [1.0, 2.0, 3.0] {
            tx1.send(input("a", "shared", v)).await.unwrap();
            s1.message().await.unwrap().unwrap();
        }
        tx2.send(input("b", "shared", 100.0)).await.unwrap();
        let other = s2.message().await.unwrap().unwrap();
        assert_eq!((stats(&other).count, stats(&other).mean), (1, 100.0));
        tx1.send(input("c", "shared", 4.0)).await.unwrap();
        let mine = s1.message().await.unwrap().unwrap();
        assert_eq!((stats(&mine).count, stats(&mine).max), (4, 4.0));
        drop((tx1, tx2));
        assert!(s1.message().await.unwrap().is_none());
        assert!(s2.message().await.unwrap().is_none());

        // No input at all: no result, and OK.
        let (results, end) = run(&mut one, Vec::new()).await;
        assert!(results.is_empty() && end.is_none(), "{results:?} {end:?}");
    })
    .await;
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Order, flow control and shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_is_kept_with_ten_thousand_inputs_in_flight() {
    const N: usize = 10_000;
    let server = TestServer::start().await;
    within(60, "order", async {
        let mut c = server.client().await;
        let (tx, rx) = mpsc::channel(N);
        for i in 0..N {
            tx.send(input(i.to_string(), &format!("key-{}", i % 100), i as f64))
                .await
                .unwrap();
        }
        let mut stream = c
            .process_live_data(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        // Every input leaves the client before a single result is read.
        let deadline = Instant::now() + Duration::from_secs(20);
        while tx.capacity() < N {
            assert!(
                Instant::now() < deadline,
                "only {} of {N} inputs left",
                tx.capacity()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(tx);
        for i in 0..N {
            let result = stream.message().await.unwrap().expect("a result per input");
            assert_eq!(result.input_id, i.to_string(), "results in input order");
            assert_eq!(result.key, format!("key-{}", i % 100));
            let s = stats(&result);
            assert_eq!(s.count as usize, (i / 100 + 1).min(100));
            assert_eq!(s.max, i as f64);
        }
        assert!(
            stream.message().await.unwrap().is_none(),
            "exactly one result per input"
        );
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_stalls_the_server_intake() {
    // Flow control bounds what is in flight: HTTP/2 windows and transport buffers of a few MiB
    // hold some 10^5 small inputs and results. A server that kept reading into a queue would
    // take all of these.
    const LIMIT: u64 = 500_000;
    let server = TestServer::start().await;
    within(120, "backpressure", async {
        let mut c = server.client().await;
        let (tx, rx) = mpsc::channel(64);
        let mut stream = c
            .process_live_data(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let mut sent = 0u64;
        loop {
            let next = input(sent.to_string(), "k", (sent % 7) as f64);
            match tokio::time::timeout(Duration::from_secs(2), tx.send(next)).await {
                Ok(sent_ok) => sent_ok.expect("the stream stays open"),
                // Nothing drained the channel for 2 s. A stall stays a stall: still full a
                // second later, the intake has stopped. A loaded machine that only paused
                // drains it again; then the same input is sent again (the timed-out send
                // dropped it) and the flow goes on. Either way `LIMIT` bounds the loop.
                Err(_) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if tx.capacity() == 0 {
                        break;
                    }
                    continue;
                }
            }
            sent += 1;
            assert!(
                sent < LIMIT,
                "{LIMIT} inputs accepted while nobody read a result: intake is not bounded"
            );
        }
        eprintln!("intake stalled after {sent} inputs");

        // Reading again resumes the flow, and nothing was lost or reordered.
        let reader = tokio::spawn(async move {
            let mut received = 0u64;
            while let Some(result) = stream.message().await.unwrap() {
                assert_eq!(result.input_id, received.to_string());
                received += 1;
            }
            received
        });
        for extra in 0..1000 {
            tx.send(input((sent + extra).to_string(), "k", 1.0))
                .await
                .unwrap();
        }
        drop(tx);
        assert_eq!(reader.await.unwrap(), sent + 1000);
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_a_live_stream_with_unavailable() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let (tx, rx) = mpsc::channel(8);
    let mut stream = c
        .process_live_data(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(input("1", "k", 1.0)).await.unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().input_id, "1");

    let stopping = tokio::spawn(server.stop());
    // The client is idle and keeps its request stream open: the server ends the stream itself.
    let end = within(10, "shutdown", stream.message()).await;
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // The server's own ending, not the transport cut at the end of the grace period.
    assert_eq!(status.message(), "server is shutting down");
    within(10, "stop", stopping).await.unwrap();
    drop(tx);
}
