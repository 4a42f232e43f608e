//! Property tests and fuzzing (proptest). Each request validator is held to a reference model
//! written independently of it (code-point ranges instead of `char` predicates), both directly
//! and through the public RPCs, where the model also predicts idempotency (the same id again is
//! the stored answer, with other content ALREADY_EXISTS) and exact per-user sequences. The
//! live-processing window is held to a from-scratch recomputation, directly and through
//! ProcessLiveData with arbitrary keys and values (NaN, infinities, huge). Finally, arbitrary
//! bytes go to each of the 23 RPCs as raw gRPC frames over HTTP/2: every call must end with a gRPC
//! status (or be a legitimately live subscription), the connection must survive, and the server
//! must go on serving.
//!
//! Case counts are small (64–512) so the file runs in seconds in a debug build. proptest picks a
//! new seed per run; a failure prints the minimal failing input, which is the thing to keep as a
//! regression test.

mod common;

use bytes::Bytes;
use common::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use prost::Message;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;
use streamhub::proto::file_chunk::Data;
use streamhub::proto::processing_result::Outcome;
use streamhub::proto::*;
use streamhub::service::live::{MAX_ABS_VALUE, Window};
use streamhub::service::{MAX_ID_BYTES, MAX_KEY_BYTES, validate_client_id, validate_key};
use tokio_stream::StreamExt;
use tonic::Code;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        // Shrinking reruns cases against a live server: keep it bounded.
        max_shrink_iters: 256,
        // A failure prints its minimal input; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Reference models, written from the rules in docs/contract.md and the README, not from the code
// ---------------------------------------------------------------------------------------------

/// Unicode general category Cc: C0 controls, DEL and C1 controls.
fn is_control(c: char) -> bool {
    let u = c as u32;
    u < 0x20 || (0x7f..=0x9f).contains(&u)
}

/// Unicode White_Space, listed.
fn is_whitespace(c: char) -> bool {
    matches!(
        c as u32,
        0x09..=0x0d
            | 0x20
            | 0x85
            | 0xa0
            | 0x1680
            | 0x2000..=0x200a
            | 0x2028
            | 0x2029
            | 0x202f
            | 0x205f
            | 0x3000
    )
}

/// A stream key: present, at most 128 bytes, no control characters.
fn key_is_valid(key: &str) -> bool {
    !key.is_empty() && key.len() <= 128 && !key.chars().any(is_control)
}

/// A client id: empty (the server picks one), or at most 128 bytes without whitespace or
/// control characters.
fn id_is_valid(id: &str) -> bool {
    id.len() <= 128 && !id.chars().any(|c| is_control(c) || is_whitespace(c))
}

/// A topic: 1 to 64 bytes of ASCII letters, digits and `. _ - : /`.
fn topic_is_valid(topic: &str) -> bool {
    (1..=64).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:/".contains(&b))
}

/// A filename: at most 255 bytes, one name (no separators, not `.` or `..`), no controls.
fn filename_is_valid(name: &str) -> bool {
    name.len() <= 255
        && !name.chars().any(is_control)
        && !name.contains('/')
        && !name.contains('\\')
        && name != "."
        && name != ".."
}

/// A content type: empty, or at most 255 printable ASCII bytes shaped `type/subtype[;params]`.
fn content_type_is_valid(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    if value.len() > 255 || !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return false;
    }
    let essence = value.split(';').next().unwrap_or("").trim();
    match essence.find('/') {
        Some(slash) => {
            let (kind, sub) = (&essence[..slash], &essence[slash + 1..]);
            !kind.is_empty() && !sub.is_empty() && !sub.contains('/')
        }
        None => false,
    }
}

/// A checksum: empty, or 64 hex digits in either case.
fn checksum_is_valid(value: &str) -> bool {
    value.is_empty() || (value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
}

const SHA256_OF_NOTHING: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Strings that probe every rule: empty, plain, arbitrary Unicode, around the 128-byte limit
/// with multi-byte characters, and with control and whitespace characters of every kind.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        1 => Just(String::new()),
        3 => "[a-z0-9]{1,12}",
        3 => any::<String>(),
        2 => "[a-zé€😀-]{30,70}",
        2 => "[a-z]{120,136}",
        3 => "[a-z]{0,4}[\\x00-\\x1f\\x7f\\u{80}-\\u{9f} \\u{85}\\u{a0}\\u{2028}\\u{3000}][a-z]{0,4}",
    ]
    .boxed()
}

/// Ids drawn from a small pool half of the time, so that reuse (idempotent or conflicting)
/// happens often.
fn id_text() -> BoxedStrategy<String> {
    prop_oneof![
        2 => Just(String::new()),
        2 => "dup-[1-3]",
        2 => text(),
    ]
    .boxed()
}

fn user_text() -> BoxedStrategy<String> {
    prop_oneof![2 => "u[1-3]", 1 => text()].boxed()
}

// ---------------------------------------------------------------------------------------------
// Validators, directly
// ---------------------------------------------------------------------------------------------

/// `validate_key` and `validate_client_id` accept exactly what their models accept, with the
/// documented message for each rejection, and never panic.
#[test]
fn validators_accept_exactly_what_their_rules_allow() {
    assert_eq!((MAX_KEY_BYTES, MAX_ID_BYTES), (128, 128));
    proptest!(cases(512), |(value in text())| {
        match validate_key("room_id", &value) {
            Ok(()) => prop_assert!(key_is_valid(&value), "accepted key {value:?}"),
            Err(e) => {
                prop_assert!(!key_is_valid(&value), "rejected key {value:?}: {e}");
                let message = e.to_string();
                let expected = if value.is_empty() {
                    "room_id is required"
                } else if value.len() > 128 {
                    "room_id is longer than 128 bytes"
                } else {
                    "room_id must not contain control characters"
                };
                prop_assert_eq!(message, expected);
                prop_assert_eq!(tonic::Status::from(e).code(), Code::InvalidArgument);
            }
        }
        match validate_client_id(&value) {
            Ok(None) => prop_assert!(value.is_empty()),
            Ok(Some(id)) => {
                prop_assert!(id_is_valid(&value) && !value.is_empty(), "accepted id {value:?}");
                prop_assert_eq!(id, value);
            }
            Err(e) => {
                prop_assert!(!id_is_valid(&value), "rejected id {value:?}: {e}");
                let expected = if value.len() > 128 {
                    "id is longer than 128 bytes"
                } else {
                    "id must not contain whitespace or control characters"
                };
                prop_assert_eq!(e.to_string(), expected);
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Validators through the RPCs
// ---------------------------------------------------------------------------------------------

fn code_of<T>(result: &Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// The model of one idempotent kind: for each client id, the user and content it was stored with
/// and its sequence; and each user's head sequence.
#[derive(Default)]
struct Model {
    /// By (user, id): ids are scoped to their stream.
    stored: HashMap<(String, String), (String, u64)>,
    heads: HashMap<String, u64>,
}

impl Model {
    /// The code a publish of `content` for `user` with `id` gets, once its fields are valid.
    fn expect(&self, user: &str, content: &str, id: &str) -> Code {
        match self.stored.get(&(user.to_string(), id.to_string())) {
            Some((c, _)) if !id.is_empty() && c != content => Code::AlreadyExists,
            _ => Code::Ok,
        }
    }

    /// The sequence an accepted publish must carry: the stored one for a repeated id, else the
    /// user's next (which is then recorded).
    fn accept(&mut self, user: &str, content: &str, id: &str) -> u64 {
        if !id.is_empty()
            && let Some((_, sequence)) = self.stored.get(&(user.to_string(), id.to_string()))
        {
            return *sequence;
        }
        let head = self.heads.entry(user.to_string()).or_default();
        *head += 1;
        if !id.is_empty() {
            self.stored.insert(
                (user.to_string(), id.to_string()),
                (content.to_string(), *head),
            );
        }
        *head
    }
}

/// PublishUserEvent and PublishNotification answer exactly as the model predicts: the validators
/// decide INVALID_ARGUMENT; a new id is stored with the user's next sequence; the same id with
/// the same content is answered with the stored record; with other content, ALREADY_EXISTS.
#[test]
fn publish_rpcs_answer_what_the_model_predicts() {
    let rt = runtime();
    let server = rt.block_on(TestServer::start());
    let client = rt.block_on(server.client());

    let events: RefCell<Model> = RefCell::default();
    proptest!(cases(96), |(user in user_text(), ty in prop_oneof![0i32..=5, any::<i32>()], id in id_text())| {
        let mut c = client.clone();
        let answer = rt.block_on(c.publish_user_event(PublishUserEventRequest {
            user_id: user.clone(),
            r#type: ty,
            data: None,
            id: id.clone(),
        }));
        let mut model = events.borrow_mut();
        let content = ty.to_string();
        let expected = if !key_is_valid(&user) || !(1..=4).contains(&ty) || !id_is_valid(&id) {
            Code::InvalidArgument
        } else {
            model.expect(&user, &content, &id)
        };
        prop_assert_eq!(code_of(&answer), expected, "user {:?} type {} id {:?}: {:?}", user, ty, id, answer);
        if let Ok(event) = answer {
            let event = event.into_inner();
            prop_assert_eq!(&event.user_id, &user);
            prop_assert_eq!(event.r#type, ty);
            prop_assert_eq!(event.sequence, model.accept(&user, &content, &id));
            if id.is_empty() {
                prop_assert!(uuid::Uuid::parse_str(&event.id).is_ok(), "server id {:?}", event.id);
            } else {
                prop_assert_eq!(&event.id, &id);
            }
        }
    });

    let notes: RefCell<Model> = RefCell::default();
    let topic = prop_oneof![2 => "[a-z]{1,6}", 1 => "[a-zA-Z0-9._:/-]{60,68}", 2 => text()];
    proptest!(cases(96), |(user in user_text(), topic in topic, id in id_text())| {
        let mut c = client.clone();
        let answer = rt.block_on(c.publish_notification(PublishNotificationRequest {
            user_id: user.clone(),
            topic: topic.clone(),
            title: "title".into(),
            id: id.clone(),
            ..Default::default()
        }));
        let mut model = notes.borrow_mut();
        // Title and body are fixed: the topic is the content that can differ.
        let expected = if !key_is_valid(&user) || !topic_is_valid(&topic) || !id_is_valid(&id) {
            Code::InvalidArgument
        } else {
            model.expect(&user, &topic, &id)
        };
        prop_assert_eq!(code_of(&answer), expected, "user {:?} topic {:?} id {:?}: {:?}", user, topic, id, answer);
        if let Ok(note) = answer {
            let note = note.into_inner();
            prop_assert_eq!(&note.user_id, &user);
            prop_assert_eq!(&note.topic, &topic);
            prop_assert_eq!(note.sequence, model.accept(&user, &topic, &id));
        }
    });
    rt.block_on(server.stop());
}

/// Upload metadata, stream keys of reads and file ids: every field's validator decides
/// INVALID_ARGUMENT exactly as its model does; valid metadata of an empty file completes (and a
/// declared checksum other than the SHA-256 of nothing is DATA_LOSS); reads with valid keys
/// succeed, and valid file ids of unknown files are NOT_FOUND.
#[test]
fn upload_metadata_and_read_requests_answer_what_the_model_predicts() {
    let rt = runtime();
    let server = rt.block_on(TestServer::start());
    let client = rt.block_on(server.client());

    let filename = prop_oneof![
        3 => "[a-z.]{0,8}",
        2 => text(),
        1 => "[a-z]{250,260}",
        1 => prop_oneof![Just(".".to_string()), Just("..".to_string()), Just("a/b".to_string()), Just("a\\b".to_string())],
    ];
    let content_type = prop_oneof![
        2 => Just(String::new()),
        2 => "[a-z]{1,5}/[a-z.+-]{1,8}(; ?charset=utf-8)?",
        2 => text(),
        1 => prop_oneof![Just("a//b".to_string()), Just("/b".to_string()), Just("a/".to_string()), Just(" a/b ; x".to_string())],
    ];
    let checksum = prop_oneof![
        2 => Just(String::new()),
        2 => Just(SHA256_OF_NOTHING.to_string()),
        1 => Just(SHA256_OF_NOTHING.to_ascii_uppercase()),
        2 => "[0-9a-fA-F]{64}",
        1 => "[0-9a-f]{63,65}",
        1 => text(),
    ];
    let size = prop_oneof![4 => Just(0i64), 1 => i64::MIN..0];
    let file_id = prop_oneof![
        2 => Just(String::new()),
        2 => any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        1 => any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).simple().to_string()),
        2 => text(),
    ];
    proptest!(cases(128), |(name in filename, kind in content_type, sum in checksum, total in size, id in file_id)| {
        let mut c = client.clone();
        let metadata = FileChunk {
            data: Some(Data::Metadata(FileMetadata {
                filename: name.clone(),
                total_size: total,
                content_type: kind.clone(),
                checksum: sum.clone(),
                file_id: id.clone(),
                ..Default::default()
            })),
            offset: 0,
        };
        let answer = rt.block_on(c.upload_file(tokio_stream::iter(vec![metadata])));
        let id_ok = id.is_empty() || uuid::Uuid::parse_str(&id).is_ok();
        let expected = if total < 0
            || !filename_is_valid(&name)
            || !content_type_is_valid(&kind)
            || !checksum_is_valid(&sum)
            || !id_ok
        {
            Code::InvalidArgument
        } else if sum.is_empty() || sum.eq_ignore_ascii_case(SHA256_OF_NOTHING) {
            Code::Ok
        } else {
            Code::DataLoss
        };
        prop_assert_eq!(code_of(&answer), expected, "{:?} {:?} {:?} {} {:?}: {:?}", name, kind, sum, total, id, answer);
        if let Ok(done) = answer {
            let done = done.into_inner();
            prop_assert_eq!(done.bytes_uploaded, 0);
            prop_assert_eq!(done.checksum_verified, !sum.is_empty());
        }
    });

    proptest!(cases(64), |(key in text(), id in prop_oneof![text(), any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string())])| {
        let mut c = client.clone();
        let history = rt.block_on(c.get_chat_history(GetChatHistoryRequest { room_id: key.clone(), ..Default::default() }));
        let expected = if key_is_valid(&key) { Code::Ok } else { Code::InvalidArgument };
        prop_assert_eq!(code_of(&history), expected, "room {:?}", key);
        let events = rt.block_on(async {
            match c.stream_user_events(StreamUserEventsRequest { user_id: key.clone(), history_only: true, ..Default::default() }).await {
                Ok(stream) => stream.into_inner().collect::<Vec<_>>().await.into_iter().collect::<Result<Vec<_>, _>>().map(|_| ()),
                Err(status) => Err(status),
            }
        });
        prop_assert_eq!(code_of(&events), expected, "user {:?}", key);

        let expected = if id.is_empty() || uuid::Uuid::parse_str(&id).is_err() { Code::InvalidArgument } else { Code::NotFound };
        let info = rt.block_on(c.get_file_info(GetFileInfoRequest { file_id: id.clone() }));
        prop_assert_eq!(code_of(&info), expected, "info {:?}", id);
        let status = rt.block_on(c.get_upload_status(GetUploadStatusRequest { file_id: id.clone() }));
        prop_assert_eq!(code_of(&status), expected, "status {:?}", id);
        let download = rt.block_on(c.download_file(DownloadFileRequest { file_id: id.clone(), offset: 0 }));
        prop_assert_eq!(code_of(&download), expected, "download {:?}", id);
    });
    rt.block_on(server.stop());
}

// ---------------------------------------------------------------------------------------------
// Live statistics
// ---------------------------------------------------------------------------------------------

/// The window's statistics as docs/contract.md defines them, recomputed from scratch: population
/// stddev, and no spread at all (mean = the value, stddev 0) when every value is equal.
fn reference(values: &[f64]) -> (u64, f64, f64, f64, f64) {
    if values.is_empty() {
        return (0, 0.0, 0.0, 0.0, 0.0);
    }
    let n = values.len() as f64;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if min == max {
        return (values.len() as u64, min, min, max, 0.0);
    }
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (values.len() as u64, mean, min, max, var.sqrt())
}

/// Below this, floating point works with subnormal numbers and relative error bounds no longer
/// hold; found by proptest with values around 2.2e-308.
const SUBNORMAL_FLOOR: f64 = 1e-290;

/// Compares one result with the reference for `window` (the values before this one, at most
/// `capacity` of them) and `value`.
fn check_stats(
    got: &WindowStats,
    before: &[f64],
    value: f64,
    capacity: usize,
    anomaly_z: f64,
) -> Result<(), TestCaseError> {
    let mut after = before.to_vec();
    after.push(value);
    let after = &after[after.len().saturating_sub(capacity)..];
    let (count, mean, min, max, stddev) = reference(after);
    let scale = after.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    prop_assert_eq!(got.count, count);
    prop_assert_eq!(got.min, min);
    prop_assert_eq!(got.max, max);
    prop_assert!(
        // The absolute floor covers subnormal values, which carry fewer significant bits.
        (got.mean - mean).abs() <= 1e-9 * mean.abs() + 1e-12 * scale + SUBNORMAL_FLOOR,
        "mean {} vs {} over {:?}",
        got.mean,
        mean,
        after
    );
    // Variances, not deviations: their rounding is bounded by the values' magnitude.
    let (v_got, v_want) = (got.stddev * got.stddev, stddev * stddev);
    prop_assert!(
        (v_got - v_want).abs() <= 1e-9 * v_want + 1e-12 * scale * scale,
        "stddev {} vs {} over {:?}",
        got.stddev,
        stddev,
        after
    );
    if min == max {
        prop_assert_eq!(got.stddev, 0.0);
        prop_assert_eq!(got.mean, min);
    }

    let (_, mean_b, _, _, sd_b) = reference(before);
    let scale_b = before.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    prop_assert!(got.z_score.is_finite(), "z {}", got.z_score);
    if sd_b == 0.0 {
        // No spread before the value (its first value, or all equal): z is 0, never an anomaly.
        prop_assert_eq!(
            (got.z_score, got.anomaly),
            (0.0, false),
            "over {:?}",
            before
        );
    } else if sd_b > 1e-6 * scale_b && sd_b > SUBNORMAL_FLOOR {
        // Well conditioned: z is the textbook value and the anomaly flag follows it.
        let z = ((value - mean_b) / sd_b).clamp(-f64::MAX, f64::MAX);
        let tolerance = 1e-6 * z.abs().max(1.0);
        prop_assert!(
            (got.z_score - z).abs() <= tolerance,
            "z {} vs {} for {} over {:?}",
            got.z_score,
            z,
            value,
            before
        );
        if (z.abs() - anomaly_z).abs() > tolerance {
            prop_assert_eq!(got.anomaly, z.abs() > anomaly_z);
        }
    }
    Ok(())
}

/// Valid values (finite, |v| ≤ 1e100) of every shape: ties and plateaus, ordinary numbers, the
/// extremes, and a large offset with tiny noise (where naive sums lose every digit).
fn value() -> BoxedStrategy<f64> {
    prop_oneof![
        3 => (-3i32..3).prop_map(f64::from),
        3 => -1e6f64..1e6,
        1 => -MAX_ABS_VALUE..MAX_ABS_VALUE,
        1 => prop_oneof![Just(MAX_ABS_VALUE), Just(-MAX_ABS_VALUE), Just(0.0), Just(-0.0), Just(f64::MIN_POSITIVE), Just(1e-300)],
        2 => (0u32..1000).prop_map(|n| 1e9 + f64::from(n) * 1e-3),
    ]
    .boxed()
}

/// The window, fed directly, matches the reference after every value, for every capacity.
#[test]
fn the_live_window_matches_a_recomputation() {
    proptest!(cases(256), |(capacity in 1usize..12, values in vec(value(), 1..80))| {
        let mut window = Window::new(capacity);
        for (i, &v) in values.iter().enumerate() {
            let got = window.observe(v, 3.0);
            let before = &values[i.saturating_sub(capacity)..i];
            check_stats(&got, before, v, capacity, 3.0)?;
        }
    });
}

/// The case proptest found: subnormal values, where only an absolute bound holds.
#[test]
fn the_live_window_matches_a_recomputation_on_subnormal_values() {
    let values = [1e-300, 0.0, 2.2250738585072014e-308, 0.0];
    let capacity = 3;
    let mut window = Window::new(capacity);
    for (i, &v) in values.iter().enumerate() {
        let got = window.observe(v, 3.0);
        let before = &values[i.saturating_sub(capacity)..i];
        check_stats(&got, before, v, capacity, 3.0).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// ProcessLiveData with arbitrary keys and values, including NaN, infinities, values past 1e100,
/// empty and control-character keys: exactly one result per input, in order; invalid inputs get
/// INVALID_KEY (checked first) or INVALID_VALUE and join no window; valid ones match the
/// reference for their key's window; the stream ends with OK.
#[test]
fn process_live_data_matches_the_model_for_any_input() {
    const WINDOW: usize = 4;
    let rt = runtime();
    let server = rt.block_on(TestServer::start_with(|c| {
        c.live_window = WINDOW;
        c.live_anomaly_z = 3.0;
    }));
    let client = rt.block_on(server.client());
    let key = prop_oneof![
        6 => prop_oneof![Just("a".to_string()), Just("b".to_string()), Just("c".to_string())],
        1 => Just(String::new()),
        1 => Just("x\u{7}".to_string()),
        1 => Just("k".repeat(129)),
        1 => text(),
    ];
    let any_value = prop_oneof![
        8 => value(),
        1 => prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY), Just(1.0000001e100), Just(-f64::MAX)],
        1 => any::<f64>(),
    ];
    proptest!(cases(64), |(inputs in vec((key, any_value), 0..40))| {
        let mut c = client.clone();
        let requests: Vec<DataInput> = inputs
            .iter()
            .enumerate()
            .map(|(i, (key, value))| DataInput { id: i.to_string(), key: key.clone(), value: *value, ..Default::default() })
            .collect();
        let results = rt.block_on(async {
            let stream = c.process_live_data(tokio_stream::iter(requests)).await?.into_inner();
            stream.collect::<Vec<_>>().await.into_iter().collect::<Result<Vec<_>, _>>()
        });
        let results = results.map_err(|s| TestCaseError::fail(format!("stream failed: {s:?}")))?;
        prop_assert_eq!(results.len(), inputs.len());
        let mut windows: HashMap<String, Vec<f64>> = HashMap::new();
        for (i, ((key, value), result)) in inputs.iter().zip(&results).enumerate() {
            prop_assert_eq!(&result.input_id, &i.to_string());
            prop_assert_eq!(&result.key, key);
            let value_ok = value.is_finite() && value.abs() <= MAX_ABS_VALUE;
            match &result.outcome {
                Some(Outcome::Error(error)) => {
                    let expected = if !key_is_valid(key) { "INVALID_KEY" } else { "INVALID_VALUE" };
                    prop_assert!(!key_is_valid(key) || !value_ok, "input {} rejected: {:?}", i, error);
                    prop_assert_eq!(error.code.as_str(), expected);
                }
                Some(Outcome::Stats(stats)) => {
                    prop_assert!(key_is_valid(key) && value_ok, "input {} ({:?}, {}) accepted", i, key, value);
                    let window = windows.entry(key.clone()).or_default();
                    let before = window[window.len().saturating_sub(WINDOW)..].to_vec();
                    check_stats(stats, &before, *value, WINDOW, 3.0)?;
                    window.push(*value);
                }
                None => prop_assert!(false, "result {} has no outcome", i),
            }
        }
    });
    rt.block_on(server.stop());
}

// ---------------------------------------------------------------------------------------------
// Raw gRPC frames to every RPC
// ---------------------------------------------------------------------------------------------

const RPCS: [&str; 23] = [
    "StreamUserEvents",
    "DownloadFile",
    "SubscribeToNotifications",
    "UploadFile",
    "ProcessDataBatch",
    "CollectMetrics",
    "Chat",
    "Collaborate",
    "ProcessLiveData",
    "PublishUserEvent",
    "PublishNotification",
    "AcknowledgeNotifications",
    "GetFileInfo",
    "GetUploadStatus",
    "GetChatHistory",
    "QueryMetrics",
    "JoinRoom",
    "SendChatMessage",
    "OpenDocument",
    "SubmitCollaborationEvent",
    "ListStreams",
    "ListFiles",
    "ListMetricSeries",
];

/// A valid request message of `rpc`, for mutation: it reaches past decoding into validation.
fn sample(rpc: &str) -> Vec<u8> {
    let nil = uuid::Uuid::nil().to_string();
    match rpc {
        "StreamUserEvents" => StreamUserEventsRequest {
            user_id: "fz".into(),
            history_only: true,
            ..Default::default()
        }
        .encode_to_vec(),
        "DownloadFile" => DownloadFileRequest {
            file_id: nil,
            offset: 0,
        }
        .encode_to_vec(),
        "SubscribeToNotifications" => SubscribeRequest {
            user_id: "fz".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "UploadFile" => FileChunk {
            data: Some(Data::Metadata(FileMetadata {
                filename: "f".into(),
                total_size: 0,
                ..Default::default()
            })),
            offset: 0,
        }
        .encode_to_vec(),
        "ProcessDataBatch" => DataRecord {
            user_id: "fz".into(),
            r#type: 1,
            ..Default::default()
        }
        .encode_to_vec(),
        "CollectMetrics" => MetricData {
            name: "m".into(),
            value: 1.0,
            ..Default::default()
        }
        .encode_to_vec(),
        "Chat" => ChatMessage {
            room_id: "fz".into(),
            user_id: "fz".into(),
            content: "hi".into(),
            r#type: ChatMessageType::Text as i32,
            ..Default::default()
        }
        .encode_to_vec(),
        "Collaborate" => CollaborationEvent {
            document_id: "fz".into(),
            user_id: "fz".into(),
            r#type: CollaborationEventType::Join as i32,
            ..Default::default()
        }
        .encode_to_vec(),
        "ProcessLiveData" => DataInput {
            key: "k".into(),
            value: 1.0,
            ..Default::default()
        }
        .encode_to_vec(),
        "PublishUserEvent" => PublishUserEventRequest {
            user_id: "fz".into(),
            r#type: 1,
            ..Default::default()
        }
        .encode_to_vec(),
        "PublishNotification" => PublishNotificationRequest {
            user_id: "fz".into(),
            topic: "t".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "AcknowledgeNotifications" => AcknowledgeNotificationsRequest {
            user_id: "fz".into(),
            up_to_sequence: 1,
        }
        .encode_to_vec(),
        "GetFileInfo" => GetFileInfoRequest { file_id: nil }.encode_to_vec(),
        "GetUploadStatus" => GetUploadStatusRequest { file_id: nil }.encode_to_vec(),
        "GetChatHistory" => GetChatHistoryRequest {
            room_id: "fz".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "QueryMetrics" => QueryMetricsRequest {
            name: "m".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "JoinRoom" => JoinRoomRequest {
            room_id: "fz".into(),
            user_id: "fz".into(),
            after_sequence: 0,
        }
        .encode_to_vec(),
        "SendChatMessage" => ChatMessage {
            room_id: "fz".into(),
            user_id: "fz".into(),
            content: "hi".into(),
            r#type: ChatMessageType::Text as i32,
            ..Default::default()
        }
        .encode_to_vec(),
        "OpenDocument" => OpenDocumentRequest {
            document_id: "fz".into(),
            user_id: "fz".into(),
            after_sequence: 0,
        }
        .encode_to_vec(),
        "SubmitCollaborationEvent" => CollaborationEvent {
            document_id: "fz".into(),
            user_id: "fz".into(),
            r#type: CollaborationEventType::Operation as i32,
            payload: b"op".to_vec(),
            base_sequence: Some(0),
            ..Default::default()
        }
        .encode_to_vec(),
        "ListStreams" => ListStreamsRequest {
            kind: StreamKind::Events as i32,
            ..Default::default()
        }
        .encode_to_vec(),
        "ListFiles" => ListFilesRequest {
            limit: 10,
            ..Default::default()
        }
        .encode_to_vec(),
        "ListMetricSeries" => ListMetricSeriesRequest {
            name_prefix: "m".into(),
            limit: 10,
        }
        .encode_to_vec(),
        other => panic!("unknown rpc {other}"),
    }
}

/// One part of a fuzzed request body.
#[derive(Debug, Clone)]
enum Piece {
    /// Arbitrary bytes behind a gRPC prefix: a compressed flag (0, 1 or anything) and the true
    /// length, or a declared one that lies.
    Framed {
        flag: u8,
        declared: Option<u32>,
        bytes: Vec<u8>,
    },
    /// The RPC's valid sample with some bytes flipped (xor at positions taken modulo its length),
    /// framed correctly.
    Mutated { flips: Vec<(usize, u8)> },
    /// Bytes with no framing at all.
    Raw(Vec<u8>),
}

fn piece() -> impl Strategy<Value = Piece> {
    let flag = prop_oneof![4 => Just(0u8), 1 => Just(1u8), 1 => any::<u8>()];
    prop_oneof![
        4 => (flag, proptest::option::weighted(0.2, any::<u32>()), vec(any::<u8>(), 0..48))
            .prop_map(|(flag, declared, bytes)| Piece::Framed { flag, declared, bytes }),
        4 => vec((any::<usize>(), 1u8..=255), 0..3).prop_map(|flips| Piece::Mutated { flips }),
        1 => vec(any::<u8>(), 1..16).prop_map(Piece::Raw),
    ]
}

fn frame(out: &mut Vec<u8>, flag: u8, len: u32, bytes: &[u8]) {
    out.push(flag);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn body_for(rpc: &str, pieces: &[Piece]) -> Bytes {
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Framed {
                flag,
                declared,
                bytes,
            } => frame(
                &mut out,
                *flag,
                declared.unwrap_or(bytes.len() as u32),
                bytes,
            ),
            Piece::Mutated { flips } => {
                let mut bytes = sample(rpc);
                for (at, xor) in flips {
                    let at = at % bytes.len();
                    bytes[at] ^= xor;
                }
                frame(&mut out, 0, bytes.len() as u32, &bytes);
            }
            Piece::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
    Bytes::from(out)
}

/// How a fuzzed call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Answer {
    /// A gRPC status code, in the headers (trailers-only) or the trailers.
    Status(i32),
    /// A valid subscription: headers without a status, then nothing, as a live tail should.
    Live,
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    let value = headers.get("grpc-status")?;
    Some(
        value
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("grpc-status is not a number: {value:?}")),
    )
}

/// Sends `body` as the whole request of `rpc` on the HTTP/2 connection and reads how it ends.
async fn raw_call(
    connection: h2::client::SendRequest<Bytes>,
    authority: String,
    rpc: &'static str,
    body: Bytes,
) -> Answer {
    let mut send = connection
        .ready()
        .await
        .expect("the connection takes requests");
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{authority}/streaming.v1.StreamingService/{rpc}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = send.send_request(request, false).expect("send request");
    stream.send_data(body, true).expect("send body");
    let response = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .unwrap_or_else(|_| panic!("{rpc}: no response headers within 20 s"))
        .unwrap_or_else(|e| panic!("{rpc}: the stream failed instead of a status: {e}"));
    assert_eq!(response.status(), 200, "{rpc}");
    if let Some(code) = grpc_status(response.headers()) {
        return Answer::Status(code);
    }
    // A live subscription never ends by itself; every other call must end promptly.
    let may_stay_open = matches!(
        rpc,
        "StreamUserEvents" | "SubscribeToNotifications" | "JoinRoom" | "OpenDocument"
    );
    let wait = Duration::from_millis(if may_stay_open { 150 } else { 20_000 });
    let mut body = response.into_body();
    let read = async {
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        body.trailers().await
    };
    match tokio::time::timeout(wait, read).await {
        Ok(Ok(Some(trailers))) => Answer::Status(
            grpc_status(&trailers).unwrap_or_else(|| panic!("{rpc}: trailers without a status")),
        ),
        Ok(Ok(None)) => panic!("{rpc}: the response ended without trailers"),
        Ok(Err(e)) => panic!("{rpc}: the response broke off instead of a status: {e}"),
        Err(_) if may_stay_open => Answer::Live,
        Err(_) => panic!("{rpc}: no status within {wait:?}"),
    }
}

/// Arbitrary bytes, framed, misframed and unframed, and mutated valid messages, to each of the
/// 23 RPCs on one HTTP/2 connection: every call ends with a gRPC status (any code; a valid
/// subscription may instead stay live), the connection survives all of it, no call stays counted
/// as open once the client is gone, and ordinary calls work afterwards.
#[test]
fn arbitrary_bytes_to_every_rpc_get_a_status_and_the_server_stays_up() {
    let rt = runtime();
    let server = rt.block_on(TestServer::start());
    let addr = server.addr;
    let connection = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (send, driver) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
        tokio::spawn(async move {
            if let Err(e) = driver.await {
                eprintln!("fuzz connection ended: {e}");
            }
        });
        send
    });
    let tally: RefCell<HashMap<(&str, Answer), u32>> = RefCell::default();
    // One message is what most RPCs expect: give it as much weight as every other shape.
    let bodies = prop_oneof![piece().prop_map(|p| vec![p]), vec(piece(), 0..5)];
    proptest!(cases(256), |(pieces in bodies)| {
        let answers = rt.block_on(async {
            let mut calls = tokio::task::JoinSet::new();
            for rpc in RPCS {
                let body = body_for(rpc, &pieces);
                let call = raw_call(connection.clone(), addr.to_string(), rpc, body);
                calls.spawn(async move { (rpc, call.await) });
            }
            let mut answers = Vec::new();
            while let Some(answer) = calls.join_next().await {
                answers.push(answer.map_err(|e| TestCaseError::fail(format!("call panicked: {e}")))?);
            }
            Ok::<_, TestCaseError>(answers)
        })?;
        for (rpc, answer) in answers {
            if let Answer::Status(code) = answer {
                prop_assert!((0..=16).contains(&code), "{} answered grpc-status {}", rpc, code);
            }
            *tally.borrow_mut().entry((rpc, answer)).or_default() += 1;
        }
    });

    rt.block_on(async {
        // The fuzzing connection still takes calls, and so does a fresh client.
        let answer = raw_call(
            connection.clone(),
            addr.to_string(),
            "GetChatHistory",
            body_for("GetChatHistory", &[Piece::Mutated { flips: vec![] }]),
        )
        .await;
        assert_eq!(answer, Answer::Status(0));
        let mut client = server.client().await;
        let event = client
            .publish_user_event(PublishUserEventRequest {
                user_id: "after-fuzz".into(),
                r#type: UserEventType::Login as i32,
                ..Default::default()
            })
            .await
            .expect("a normal call after the fuzzing")
            .into_inner();
        assert_eq!(event.sequence, 1);
        // Calls left live were abandoned with their futures: none stays open.
        drop(connection);
        wait_for_metrics(addr, "no call left open", Duration::from_secs(10), |text| {
            RPCS.iter().all(|rpc| rpc_open(text, rpc) == 0)
        })
        .await;
    });
    let mut tally: Vec<_> = tally.into_inner().into_iter().collect();
    tally.sort();
    eprintln!("answers (rpc, answer, count): {tally:?}");
    rt.block_on(server.stop());
}
