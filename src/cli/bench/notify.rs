//! `streamhub bench notify`: publish→receive latency of notifications with many subscribed users.
//!
//! Every user of the run holds one live SubscribeToNotifications stream (spread over a few
//! connections). A warm-up notification per user proves every subscription live before the
//! clock starts; then notifications go to random users at a steady rate, each carrying its send
//! time in `data`, and every subscriber checks that its sequences arrive contiguous. Like every
//! bench it uses only the public gRPC API and writes only to `bench-<run>-…` users.

use super::super::{CliResult, Connect, fail};
use super::{
    Row, RssProbe, clients, finish_row, latency_of, latency_summary, percentile, print_table, rate,
    stamped_data,
};
use crate::cli::format::thousands;
use crate::proto::{PublishNotificationRequest, SubscribeRequest};
use clap::Args;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

#[derive(Debug, Args)]
pub struct NotifyBench {
    /// Users, each with one live subscription.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Notifications published per second, each to a random user.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Client connections to spread subscriptions and publishes over.
    #[arg(long, default_value_t = 8)]
    pub connections: usize,
}

/// Publishes in flight during the warm-up.
const WARM_UP_IN_FLIGHT: usize = 64;

/// xorshift64*: which user gets the next notification. No need for a crate.
struct Pick(u64);

impl Pick {
    fn below(&mut self, n: usize) -> usize {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize
    }
}

fn request(user: &str, data: Option<prost_types::Any>) -> PublishNotificationRequest {
    PublishNotificationRequest {
        user_id: user.to_string(),
        topic: "bench".into(),
        title: "bench".into(),
        body: String::new(),
        data,
        id: String::new(),
    }
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    samples: Vec<Duration>,
    /// Notifications that did not carry the next sequence (a gap or a duplicate).
    out_of_order: u64,
    error: Option<String>,
}

pub async fn run(connect: &Connect, pid: Option<u32>, bench: NotifyBench) -> CliResult<()> {
    if bench.users == 0 || bench.rate == 0 || bench.seconds == 0 {
        return Err(fail("--users, --rate and --seconds must be at least 1"));
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let pool = clients(connect, bench.connections).await?;
    let rss = RssProbe { pid };
    let users: Vec<String> = (0..bench.users)
        .map(|u| format!("bench-{run_id}-notify-{u}"))
        .collect();
    eprintln!(
        "bench run {run_id} against {}: {} subscribed users",
        connect.server,
        thousands(users.len() as u64)
    );

    rss.reset();
    let ready = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut subscribers = JoinSet::new();
    for (u, user) in users.iter().enumerate() {
        let mut client = pool[u % pool.len()].clone();
        let mut stream = client
            .subscribe_to_notifications(SubscribeRequest {
                user_id: user.clone(),
                topics: Vec::new(),
                after_sequence: 0,
            })
            .await?
            .into_inner();
        let (ready, delivered, stop) = (ready.clone(), delivered.clone(), stop.clone());
        subscribers.spawn(async move {
            let mut seen = Seen::default();
            let mut next = 1;
            loop {
                let notification = tokio::select! {
                    _ = stop.cancelled() => break,
                    message = stream.message() => match message {
                        Ok(Some(notification)) => notification,
                        Ok(None) => break,
                        Err(status) => {
                            seen.error = Some(format!("{:?}: {}", status.code(), status.message()));
                            break;
                        }
                    },
                };
                if notification.sequence != next {
                    seen.out_of_order += 1;
                }
                next = notification.sequence + 1;
                match latency_of(notification.data.as_ref()) {
                    Some(latency) => {
                        seen.samples.push(latency);
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        ready.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            seen
        });
    }

    // Warm-up: one unstamped notification per user; when each has arrived, every subscription
    // is live end to end.
    let warm_up = Instant::now();
    let mut calls = JoinSet::new();
    for (u, user) in users.iter().enumerate() {
        let mut client = pool[u % pool.len()].clone();
        let request = request(user, None);
        calls.spawn(async move { client.publish_notification(request).await });
        while calls.len() >= WARM_UP_IN_FLIGHT
            && let Some(done) = calls.join_next().await
        {
            done.map_err(|e| fail(e.to_string()))??;
        }
    }
    while let Some(done) = calls.join_next().await {
        done.map_err(|e| fail(e.to_string()))??;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while ready.load(Ordering::Relaxed) < users.len() as u64 {
        if Instant::now() > deadline {
            return Err(fail(format!(
                "only {} of {} subscriptions received their warm-up notification in 30 s",
                ready.load(Ordering::Relaxed),
                users.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "  {} subscriptions live in {:.2} s; publishing {}/s for {} s",
        thousands(users.len() as u64),
        warm_up.elapsed().as_secs_f64(),
        thousands(bench.rate),
        bench.seconds
    );

    let expected = bench.rate * bench.seconds;
    let mut pick = Pick(u64::from_str_radix(&run_id, 16).unwrap_or(0x5eed) | 1);
    let start = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / bench.rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut publishes = JoinSet::new();
    let mut call_latencies = Vec::with_capacity(expected as usize);
    for i in 0..expected {
        ticker.tick().await;
        let mut client = pool[i as usize % pool.len()].clone();
        let request = request(&users[pick.below(users.len())], Some(stamped_data()));
        publishes.spawn(async move {
            let sent = Instant::now();
            client.publish_notification(request).await?;
            Ok::<_, tonic::Status>(sent.elapsed())
        });
        while let Some(done) = publishes.try_join_next() {
            call_latencies.push(done.map_err(|e| fail(e.to_string()))??);
        }
    }
    while let Some(done) = publishes.join_next().await {
        call_latencies.push(done.map_err(|e| fail(e.to_string()))??);
    }
    let publish_time = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();

    let mut samples = Vec::with_capacity(expected as usize);
    let mut out_of_order = 0;
    let mut errors = Vec::new();
    while let Some(joined) = subscribers.join_next().await {
        let seen = joined.map_err(|e| fail(e.to_string()))?;
        samples.extend(seen.samples);
        out_of_order += seen.out_of_order;
        errors.extend(seen.error);
    }
    samples.sort_unstable();
    let got = delivered.load(Ordering::Relaxed);

    let rows = vec![
        finish_row(
            Row {
                figure: format!(
                    "{} subscribed users, {}/s to random users",
                    thousands(users.len() as u64),
                    thousands(bench.rate)
                ),
                result: format!(
                    "p99 {:.2} ms",
                    percentile(&samples, 99.0).as_secs_f64() * 1e3
                ),
                detail: format!(
                    "publish→receive {}; {} of {} delivered ({}/s) in {:.1} s; {} out of order",
                    latency_summary(samples),
                    thousands(got),
                    thousands(expected),
                    thousands(rate(got, publish_time)),
                    publish_time.as_secs_f64(),
                    out_of_order
                ),
                peak_rss: None,
            },
            &rss,
        ),
        finish_row(
            Row {
                figure: "PublishNotification call".into(),
                result: format!("{} calls/s", thousands(rate(expected, publish_time))),
                detail: format!("call latency {}", latency_summary(call_latencies)),
                peak_rss: None,
            },
            &rss,
        ),
    ];
    print_table(
        &format!(
            "streamhub bench notify: server {}{}, {} connections",
            connect.server,
            pid.map(|p| format!(", pid {p}")).unwrap_or_default(),
            pool.len()
        ),
        &rows,
    );
    if let Some(error) = errors.first() {
        return Err(fail(format!(
            "{} subscriptions failed, the first with {error}",
            errors.len()
        )));
    }
    if out_of_order > 0 || got < expected {
        return Err(fail(format!(
            "delivery was not exact: {out_of_order} out of order, {got} of {expected} delivered"
        )));
    }
    Ok(())
}
