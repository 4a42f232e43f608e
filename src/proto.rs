//! The generated wire contract (`streaming.v1`) and small conversions around it.
//!
//! Generated code is included as is; this module adds only timestamp and JSON helpers that
//! both the server and the CLI need. It never holds business rules.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("streaming.v1");
}

pub use v1::*;

/// The generated server: the same contract, with UserEvent going out as
/// [`crate::wire::UserEventOut`].
pub mod server {
    include!(concat!(env!("OUT_DIR"), "/server/streaming.v1.rs"));
}
pub use server::streaming_service_server;

/// The encoded descriptor set of the contract, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/streaming_descriptor.bin"));

/// Microseconds since the Unix epoch as a protobuf Timestamp.
pub fn timestamp_from_micros(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// A protobuf Timestamp as microseconds since the Unix epoch, or `None` when it is malformed
/// (nanos out of range) or outside what microseconds in an i64 can hold.
pub fn micros_from_timestamp(ts: &prost_types::Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    ts.seconds
        .checked_mul(1_000_000)?
        .checked_add(i64::from(ts.nanos) / 1000)
}

/// The type URL under which JSON data travels in an `Any`: a `google.protobuf.Struct` or `Value`.
pub const JSON_VALUE_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Value";

/// Packs a JSON value into an `Any` holding a `google.protobuf.Value`, so any gRPC client can
/// decode it with the well-known types.
pub fn any_from_json(json: &serde_json::Value) -> prost_types::Any {
    use prost::Message;
    prost_types::Any {
        type_url: JSON_VALUE_TYPE_URL.to_string(),
        value: value_from_json(json).encode_to_vec(),
    }
}

/// Re-encodes an `Any` holding a `google.protobuf.Struct`, `Value` or `ListValue` with its map
/// keys sorted, so that the same JSON always gives the same bytes. (A proto map has no encoded
/// order, and a decoder may re-encode it in any order: an event read back from `tail --json`
/// and imported again must still match its stored copy, which idempotency compares by bytes.)
/// Any other `Any`, or one that does not decode, is returned as it is.
pub fn canonical_any(any: prost_types::Any) -> prost_types::Any {
    use prost::Message;
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let value = match name {
        "google.protobuf.Value" => prost_types::Value::decode(any.value.as_slice())
            .ok()
            .map(|v| v.encode_to_vec()),
        "google.protobuf.Struct" => prost_types::Struct::decode(any.value.as_slice())
            .ok()
            .map(|v| v.encode_to_vec()),
        "google.protobuf.ListValue" => prost_types::ListValue::decode(any.value.as_slice())
            .ok()
            .map(|v| v.encode_to_vec()),
        _ => None,
    };
    match value {
        Some(value) => prost_types::Any {
            type_url: any.type_url,
            value,
        },
        None => any,
    }
}

fn value_from_json(json: &serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match json {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(value_from_json).collect(),
        }),
        serde_json::Value::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map
                .iter()
                .map(|(k, v)| (k.clone(), value_from_json(v)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

fn json_from_value(value: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        // Whole numbers print as integers, as they were most likely written.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
            serde_json::Value::Number((*n as i64).into())
        }
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.iter().map(json_from_value).collect())
        }
        Some(Kind::StructValue(st)) => serde_json::Value::Object(
            st.fields
                .iter()
                .map(|(k, v)| (k.clone(), json_from_value(v)))
                .collect(),
        ),
    }
}

/// Renders an `Any` for people: JSON when it holds a `Value` or `Struct`, else its type URL and
/// size.
pub fn describe_any(any: &prost_types::Any) -> String {
    match json_of_any(any) {
        Some(json) => json.to_string(),
        None => format!("<{} bytes of {}>", any.value.len(), any.type_url),
    }
}

/// An optional `Any` as a JSON value for `--json` output: its JSON when it holds a `Value` or
/// `Struct`, else the description as a string, and `null` when there is none.
pub fn any_to_json(any: Option<&prost_types::Any>) -> serde_json::Value {
    match any {
        None => serde_json::Value::Null,
        Some(any) => json_of_any(any).unwrap_or_else(|| describe_any(any).into()),
    }
}

fn json_of_any(any: &prost_types::Any) -> Option<serde_json::Value> {
    use prost::Message;
    const STRUCT_TYPE_URL: &str = "type.googleapis.com/google.protobuf.Struct";
    let json = match any.type_url.as_str() {
        JSON_VALUE_TYPE_URL => prost_types::Value::decode(any.value.as_slice())
            .ok()
            .map(|v| json_from_value(&v)),
        STRUCT_TYPE_URL => prost_types::Struct::decode(any.value.as_slice())
            .ok()
            .map(|s| {
                json_from_value(&prost_types::Value {
                    kind: Some(prost_types::value::Kind::StructValue(s)),
                })
            }),
        _ => None,
    };
    json
}

impl UserEventType {
    /// The short lowercase name the CLI uses: `login`, `logout`, `profile_update`, …
    pub fn short_name(self) -> &'static str {
        match self {
            UserEventType::Unspecified => "unspecified",
            UserEventType::Login => "login",
            UserEventType::Logout => "logout",
            UserEventType::ProfileUpdate => "profile_update",
            UserEventType::PasswordChange => "password_change",
        }
    }

    /// Parses a short name (`login`) or the full enum name (`USER_EVENT_TYPE_LOGIN`).
    pub fn parse_name(name: &str) -> Option<Self> {
        let upper = name.trim().to_ascii_uppercase();
        let full = if upper.starts_with("USER_EVENT_TYPE_") {
            upper
        } else {
            format!("USER_EVENT_TYPE_{upper}")
        };
        UserEventType::from_str_name(&full).filter(|t| *t != UserEventType::Unspecified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_fields_in_any_order_encode_the_same_once_canonical() {
        use prost::Message;
        let one = |key: &str| prost_types::Struct {
            fields: [(key.to_string(), value_from_json(&serde_json::json!(1)))].into(),
        };
        // Map entries concatenate: this is a valid Struct with "b" encoded before "a".
        let mut reversed = one("b").encode_to_vec();
        reversed.extend(one("a").encode_to_vec());
        let sorted = prost_types::Struct::decode(reversed.as_slice())
            .unwrap()
            .encode_to_vec();
        assert_ne!(reversed, sorted);
        let any = |value: Vec<u8>| prost_types::Any {
            type_url: "type.googleapis.com/google.protobuf.Struct".into(),
            value,
        };
        assert_eq!(canonical_any(any(reversed)), any(sorted.clone()));
        let other = prost_types::Any {
            type_url: "type.googleapis.com/acme.Thing".into(),
            value: vec![0xff],
        };
        assert_eq!(canonical_any(other.clone()), other);
    }

    #[test]
    fn timestamps_round_trip_including_before_the_epoch() {
        for micros in [
            0,
            1,
            999_999,
            1_000_000,
            -1,
            -1_000_001,
            1_764_000_000_123_456,
        ] {
            let ts = timestamp_from_micros(micros);
            assert!((0..1_000_000_000).contains(&ts.nanos));
            assert_eq!(micros_from_timestamp(&ts), Some(micros));
        }
        let bad = prost_types::Timestamp {
            seconds: 1,
            nanos: -5,
        };
        assert_eq!(micros_from_timestamp(&bad), None);
    }

    #[test]
    fn json_any_round_trips() {
        let json =
            serde_json::json!({"ip": "10.0.0.1", "n": 3.5, "count": 7, "ok": true, "tags": ["a"]});
        assert_eq!(describe_any(&any_from_json(&json)), json.to_string());
        let packed = any_from_json(&json);
        assert_eq!(canonical_any(packed.clone()), packed);
    }

    #[test]
    fn event_type_names_parse() {
        assert_eq!(
            UserEventType::parse_name("login"),
            Some(UserEventType::Login)
        );
        assert_eq!(
            UserEventType::parse_name("USER_EVENT_TYPE_PASSWORD_CHANGE"),
            Some(UserEventType::PasswordChange)
        );
        assert_eq!(UserEventType::parse_name("unspecified"), None);
        assert_eq!(UserEventType::parse_name("nope"), None);
    }
}
