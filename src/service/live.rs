//! Live processing: ProcessLiveData, per-key sliding-window statistics over a bidirectional
//! stream, one result per input in input order.
//!
//! This capability is pure per-stream computation: it never touches the store or the log engine,
//! and it never spawns a task or keeps a queue. The response stream pulls the next input only when
//! the transport asks for the next result, so a client that stops reading stops the server's
//! reading too (HTTP/2 flow control), and a stream's memory is its windows and nothing else.
//!
//! Statistics, exactly:
//! - The window of a key holds the last `live_window` valid values sent with that key on this
//!   stream (keys of different streams are unrelated).
//! - `count`, `mean`, `min`, `max` and `stddev` describe the window after the new value joined it
//!   (and the oldest left, when it was full). `stddev` is the population standard deviation
//!   (divide by n), the usual choice for a window that is the whole population of interest.
//! - `z_score` is `(value − mean) / stddev` with the mean and population stddev of the window as
//!   it was before the value joined (up to `live_window` previous values). When that window is
//!   empty (a key's first value) or its values are all equal (stddev 0), `z_score` is 0 and the
//!   input is never an anomaly. A z too large for an f64 is reported as ±f64::MAX.
//! - `anomaly` is `|z_score| > live_anomaly_z`.
//!
//! An input with an invalid key or value gets an `error` result (codes [`INVALID_KEY`],
//! [`INVALID_VALUE`]), is not added to any window and does not end the stream. A new key beyond
//! `live_max_keys` ends the stream with RESOURCE_EXHAUSTED, after the results of every earlier
//! input. Server shutdown ends the stream with UNAVAILABLE.

use super::{ResponseStream, validate_key};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::proto::{self, DataInput, ProcessingError, ProcessingResult, WindowStats};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Status, Streaming};

/// `ProcessingError.code` of an input whose key is empty, too long or has control characters.
pub const INVALID_KEY: &str = "INVALID_KEY";
/// `ProcessingError.code` of an input whose value is NaN, infinite or beyond [`MAX_ABS_VALUE`].
pub const INVALID_VALUE: &str = "INVALID_VALUE";
/// Largest accepted |value|. Squares of differences of values up to this bound, summed over any
/// realistic window, stay finite, so no statistic ever turns into inf or NaN.
pub const MAX_ABS_VALUE: f64 = 1e100;

/// The settings one stream runs with.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// Values per key's window, at least 1.
    window: usize,
    anomaly_z: f64,
    max_keys: usize,
}

/// The live-processing capability.
#[derive(Debug, Clone)]
pub struct Live {
    settings: Settings,
    /// Cancelled when the server shuts down; every live stream then ends with UNAVAILABLE.
    shutdown: CancellationToken,
}

impl Live {
    pub fn new(config: &Config, shutdown: CancellationToken) -> Self {
        Live {
            settings: Settings {
                window: config.live_window.max(1),
                anomaly_z: config.live_anomaly_z,
                max_keys: config.live_max_keys,
            },
            shutdown,
        }
    }

    /// Answers every input of `inputs` with one result, in order. Nothing runs until the
    /// transport polls the returned stream, and each poll reads at most one input.
    pub fn process(
        &self,
        inputs: Streaming<proto::DataInput>,
    ) -> Result<ResponseStream<proto::ProcessingResult>> {
        Ok(Box::pin(LiveStream {
            inputs,
            windows: Windows::new(self.settings),
            shutdown_token: self.shutdown.clone(),
            shutdown: Box::pin(self.shutdown.clone().cancelled_owned()),
            done: false,
            read: 0,
        }))
    }
}

/// The response stream: one result per polled input. It owns the inbound stream, so that reading
/// and answering are one step and no buffer sits between them.
struct LiveStream {
    inputs: Streaming<DataInput>,
    windows: Windows,
    /// Checked cheaply before each input; `shutdown` is only polled to register a wake-up.
    shutdown_token: CancellationToken,
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Set after the last item (the end of the inbound stream, or a status).
    done: bool,
    /// Inputs read so far, for the log line at the end.
    read: u64,
}

impl Drop for LiveStream {
    fn drop(&mut self) {
        tracing::debug!(
            inputs = self.read,
            keys = self.windows.by_key.len(),
            finished = self.done,
            "live stream closed"
        );
    }
}

impl Stream for LiveStream {
    type Item = Result<ProcessingResult, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.shutdown_token.is_cancelled() {
            this.done = true;
            return Poll::Ready(Some(Err(Error::Unavailable.into())));
        }
        let polled = match Pin::new(&mut this.inputs).poll_next(cx) {
            Poll::Ready(polled) => polled,
            Poll::Pending => {
                // Waiting for the client: be woken by a shutdown too.
                ready!(this.shutdown.as_mut().poll(cx));
                this.done = true;
                return Poll::Ready(Some(Err(Error::Unavailable.into())));
            }
        };
        let item = match polled {
            None => None,
            Some(Err(status)) => Some(Err(status)),
            Some(Ok(input)) => {
                this.read += 1;
                Some(this.windows.process(input).map_err(Status::from))
            }
        };
        this.done = !matches!(item, Some(Ok(_)));
        Poll::Ready(item)
    }
}

/// Every key's window on one stream.
struct Windows {
    settings: Settings,
    by_key: HashMap<String, Window>,
}

impl Windows {
    fn new(settings: Settings) -> Self {
        Windows {
            settings,
            by_key: HashMap::new(),
        }
    }

    /// The result for one input, or the fatal error that ends the stream (too many keys).
    fn process(&mut self, input: DataInput) -> Result<ProcessingResult> {
        let DataInput { id, key, value, .. } = input;
        let outcome = match Self::validate(&key, value) {
            Err(error) => proto::processing_result::Outcome::Error(error),
            Ok(()) => {
                let window = match self.by_key.get_mut(&key) {
                    Some(window) => window,
                    None => {
                        if self.by_key.len() >= self.settings.max_keys {
                            return Err(Error::ResourceExhausted(format!(
                                "more than {} distinct keys in one stream",
                                self.settings.max_keys
                            )));
                        }
                        self.by_key
                            .entry(key.clone())
                            .or_insert_with(|| Window::new(self.settings.window))
                    }
                };
                proto::processing_result::Outcome::Stats(
                    window.observe(value, self.settings.anomaly_z),
                )
            }
        };
        Ok(ProcessingResult {
            input_id: id,
            key,
            outcome: Some(outcome),
        })
    }

    fn validate(key: &str, value: f64) -> Result<(), ProcessingError> {
        validate_key("key", key).map_err(|e| ProcessingError {
            code: INVALID_KEY.into(),
            message: e.to_string(),
        })?;
        let problem = if value.is_nan() {
            "value is NaN"
        } else if value.is_infinite() {
            "value is infinite"
        } else if value.abs() > MAX_ABS_VALUE {
            "value is outside ±1e100"
        } else {
            return Ok(());
        };
        Err(ProcessingError {
            code: INVALID_VALUE.into(),
            message: problem.into(),
        })
    }
}

/// The last `capacity` values of one key with their running statistics, all O(1) amortised per
/// value: Welford's mean and sum of squared deviations (with removal), and monotonic deques for
/// the minimum and maximum.
///
/// Public only so that property tests (tests/fuzz.rs) can hold it against a from-scratch
/// reference; the server builds windows only through ProcessLiveData, which validates values
/// first (finite, |v| ≤ [`MAX_ABS_VALUE`]). Other values are outside its contract.
pub struct Window {
    capacity: usize,
    values: VecDeque<f64>,
    /// Position (in this key's whole sequence of values) of `values[0]`.
    first: u64,
    mean: f64,
    /// Sum of squared deviations from `mean`.
    m2: f64,
    /// The largest `m2` since the last recomputation. Rounding error in `m2` is relative to this
    /// peak, so when `m2` collapses far below it (a far-off value left the window) the remaining
    /// digits are noise and `m2` is recomputed.
    m2_peak: f64,
    /// Positions of increasing values, the window's minimum first.
    mins: VecDeque<u64>,
    /// Positions of decreasing values, the window's maximum first.
    maxs: VecDeque<u64>,
    /// Evictions since `mean` and `m2` were last recomputed from the values. Removal lets rounding
    /// error build up over a long stream; recomputing once per `capacity` evictions bounds it at
    /// an amortised cost of two operations per value.
    evictions: usize,
}

/// `m2` below this fraction of its peak is recomputed: its relative error is then at most about
/// `capacity × ε / COLLAPSE` (≈ 2e-11 for a window of 100).
const COLLAPSE: f64 = 1e-3;

/// What a window looks like at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Summary {
    count: usize,
    mean: f64,
    min: f64,
    max: f64,
    stddev: f64,
}

impl Window {
    /// An empty window of `capacity` values (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Window {
            capacity,
            values: VecDeque::new(),
            first: 0,
            mean: 0.0,
            m2: 0.0,
            m2_peak: 0.0,
            mins: VecDeque::new(),
            maxs: VecDeque::new(),
            evictions: 0,
        }
    }

    fn at(&self, position: u64) -> f64 {
        self.values[(position - self.first) as usize]
    }

    /// The statistics of the current values; all zero when there are none.
    fn summary(&self) -> Summary {
        let (Some(&lo), Some(&hi)) = (self.mins.front(), self.maxs.front()) else {
            return Summary {
                count: 0,
                mean: 0.0,
                min: 0.0,
                max: 0.0,
                stddev: 0.0,
            };
        };
        let (min, max) = (self.at(lo), self.at(hi));
        let count = self.values.len();
        // All values equal ⇔ min == max: then the spread is exactly 0, whatever rounding left
        // in `m2`, so a constant series never yields a spurious z.
        let (mean, stddev) = if min == max {
            (min, 0.0)
        } else {
            (
                self.mean.clamp(min, max),
                (self.m2.max(0.0) / count as f64).sqrt(),
            )
        };
        Summary {
            count,
            mean,
            min,
            max,
            stddev,
        }
    }

    /// Scores `value` against the window, then adds it; returns the result's statistics, with
    /// `anomaly` set when |z| is above `anomaly_z`.
    pub fn observe(&mut self, value: f64, anomaly_z: f64) -> WindowStats {
        let before = self.summary();
        // An empty window has stddev 0 too: no spread, no z.
        let z_score = if before.stddev > 0.0 {
            let z = (value - before.mean) / before.stddev;
            if z.is_finite() {
                z
            } else {
                f64::MAX.copysign(z)
            }
        } else {
            0.0
        };
        self.push(value);
        let after = self.summary();
        WindowStats {
            count: after.count as u64,
            mean: after.mean,
            min: after.min,
            max: after.max,
            stddev: after.stddev,
            z_score,
            anomaly: z_score.abs() > anomaly_z,
        }
    }

    fn push(&mut self, value: f64) {
        if self.values.len() == self.capacity {
            self.evict();
        }
        let position = self.first + self.values.len() as u64;
        self.values.push_back(value);
        while self.mins.back().is_some_and(|&p| self.at(p) >= value) {
            self.mins.pop_back();
        }
        self.mins.push_back(position);
        while self.maxs.back().is_some_and(|&p| self.at(p) <= value) {
            self.maxs.pop_back();
        }
        self.maxs.push_back(position);

        let n = self.values.len() as f64;
        let delta = value - self.mean;
        self.mean += delta / n;
        self.m2 += delta * (value - self.mean);
        self.m2_peak = self.m2_peak.max(self.m2);

        if self.evictions >= self.capacity || self.m2 < self.m2_peak * COLLAPSE {
            self.recompute();
        }
    }

    fn evict(&mut self) {
        let Some(old) = self.values.pop_front() else {
            return;
        };
        if self.mins.front() == Some(&self.first) {
            self.mins.pop_front();
        }
        if self.maxs.front() == Some(&self.first) {
            self.maxs.pop_front();
        }
        self.first += 1;
        self.evictions += 1;
        let n = self.values.len() as f64;
        if self.values.is_empty() {
            self.mean = 0.0;
            self.m2 = 0.0;
            self.m2_peak = 0.0;
        } else {
            let delta = old - self.mean;
            self.mean -= delta / n;
            self.m2 = (self.m2 - delta * (old - self.mean)).max(0.0);
        }
    }

    /// Two-pass mean and sum of squared deviations, exact up to one rounding per value.
    fn recompute(&mut self) {
        let n = self.values.len() as f64;
        self.mean = self.values.iter().sum::<f64>() / n;
        self.m2 = self
            .values
            .iter()
            .map(|v| (v - self.mean) * (v - self.mean))
            .sum();
        self.m2_peak = self.m2;
        self.evictions = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition, recomputed from scratch.
    fn reference(values: &[f64]) -> Summary {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        Summary {
            count: values.len(),
            mean,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            stddev: var.sqrt(),
        }
    }

    /// Equal up to a relative 1e-9, or to a few dozen units in the last place of the values'
    /// magnitude (`scale`): rounding that bounds the reference's own error too.
    fn close(a: f64, b: f64, scale: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs() + 1e-14 * scale
    }

    const ANOMALY_Z: f64 = 3.0;

    #[test]
    fn running_statistics_match_a_recomputation_over_a_long_drifting_series() {
        // A large offset with small noise, trends and plateaus: the case where naive sums of
        // squares lose every digit and removal-based updates drift.
        for capacity in [1, 2, 3, 7, 100] {
            let mut window = Window::new(capacity);
            let mut all = Vec::new();
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            for i in 0..200_000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let noise = (x % 1000) as f64 / 1000.0;
                let value = match (i / 5000) % 4 {
                    0 => 1e9 + noise,
                    1 => 1e9 + i as f64,
                    2 => 42.0, // a plateau: stddev must come out exactly 0
                    _ => -(i as f64) * 1e-3 + noise * 1e-6,
                };
                all.push(value);
                let got = window.observe(value, ANOMALY_Z);
                let recent = &all[all.len().saturating_sub(capacity)..];
                let want = reference(recent);
                let scale = want.max.abs().max(want.min.abs());
                assert_eq!(got.count, want.count as u64, "i={i} cap={capacity}");
                assert_eq!(got.min, want.min, "i={i} cap={capacity}");
                assert_eq!(got.max, want.max, "i={i} cap={capacity}");
                assert!(
                    close(got.mean, want.mean, scale),
                    "i={i} mean {got:?} {want:?}"
                );
                assert!(
                    close(got.stddev, want.stddev, scale),
                    "i={i} cap={capacity} stddev {got:?} vs {want:?}"
                );
                if want.min == want.max {
                    assert_eq!(got.stddev, 0.0);
                    assert_eq!(got.mean, want.min);
                }
            }
        }
    }

    #[test]
    fn z_score_edge_cases() {
        let s = ANOMALY_Z;
        let mut window = Window::new(10);
        // First value: nothing to compare with.
        let first = window.observe(5.0, s);
        assert_eq!((first.z_score, first.anomaly), (0.0, false));
        // A constant window has stddev 0: z is 0 however far the new value is.
        window.observe(5.0, s);
        let jump = window.observe(1e6, s);
        assert_eq!((jump.z_score, jump.anomaly), (0.0, false));
        // The tightest spread whose variance is still representable, and the largest accepted
        // value: z is enormous but finite (values are capped at 1e100 for this).
        let mut tight = Window::new(10);
        tight.observe(0.0, s);
        tight.observe(1e-150, s);
        let huge = tight.observe(MAX_ABS_VALUE, s);
        assert!(huge.z_score.is_finite() && huge.z_score > 1e250, "{huge:?}");
        assert!(huge.anomaly);
        // A spread that underflows to a zero variance counts as no spread.
        let mut underflow = Window::new(10);
        underflow.observe(0.0, s);
        underflow.observe(1e-300, s);
        let flat = underflow.observe(1.0, s);
        assert_eq!((flat.z_score, flat.anomaly), (0.0, false));
    }
}
