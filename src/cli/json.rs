//! `--json`: messages of the contract printed and read in the canonical proto3 JSON mapping,
//! the same text grpcurl and `buf curl` print (lowerCamelCase names, 64-bit integers as
//! strings, enums by name, RFC 3339 timestamps, `Any` with its `@type`), so the output of one
//! tool is the input of another.
//!
//! The mapping is prost-reflect's, over the contract's own encoded descriptor set
//! ([`crate::proto::FILE_DESCRIPTOR_SET`]) and the well-known types. Nothing here writes JSON
//! by hand, and nothing here changes a message.

use super::{CliError, CliResult, fail};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use std::sync::OnceLock;

/// A message type of the contract that the CLI prints or reads as JSON.
pub trait Proto: Message + Default {
    /// Its full protobuf name, `streaming.v1.UserEvent`.
    const NAME: &'static str;
}

macro_rules! proto_names {
    ($($name:ident),* $(,)?) => {
        $(impl Proto for crate::proto::$name {
            const NAME: &'static str = concat!("streaming.v1.", stringify!($name));
        })*
    };
}

proto_names!(
    UserEvent,
    DataRecord,
    BatchProcessingResult,
    Notification,
    AcknowledgeNotificationsResponse,
    ChatMessage,
    GetChatHistoryResponse,
    FileMetadata,
    UploadFileResponse,
    GetUploadStatusResponse,
    ProcessingResult,
    MetricsCollectionResult,
    QueryMetricsResponse,
);

/// The well-known types, then the contract; built once.
fn pool() -> CliResult<&'static DescriptorPool> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut pool = DescriptorPool::global();
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| e.to_string())?;
        // The set carries its imports (google/protobuf/*.proto), which the pool already has.
        let files = set
            .file
            .into_iter()
            .filter(|file| pool.get_file_by_name(file.name()).is_none())
            .collect::<Vec<_>>();
        pool.add_file_descriptor_protos(files)
            .map_err(|e| e.to_string())?;
        Ok(pool)
    })
    .as_ref()
    .map_err(|e| fail(format!("the contract's descriptors do not load: {e}")))
}

fn descriptor<M: Proto>() -> CliResult<MessageDescriptor> {
    pool()?
        .get_message_by_name(M::NAME)
        .ok_or_else(|| fail(format!("{} is not in the contract's descriptors", M::NAME)))
}

/// One message as one line of canonical proto3 JSON.
pub fn to_json<M: Proto>(message: &M) -> CliResult<String> {
    let dynamic = DynamicMessage::decode(descriptor::<M>()?, message.encode_to_vec().as_slice())
        .map_err(|e| fail(format!("{} does not re-decode: {e}", M::NAME)))?;
    serde_json::to_string(&dynamic).map_err(|e| {
        fail(format!(
            "cannot print a {} as proto3 JSON: {e} (an Any of a type outside the contract has no \
             JSON form)",
            M::NAME
        ))
    })
}

/// Prints one message as one line of canonical proto3 JSON on stdout.
pub fn print<M: Proto>(message: &M) -> CliResult<()> {
    super::print_line(&to_json(message)?)
}

/// Reads one message from proto3 JSON text (either field spelling, `userId` or `user_id`).
/// Unknown fields are refused. The error carries no position: the caller names the line.
pub fn from_json<M: Proto>(text: &str) -> CliResult<M> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let dynamic = DynamicMessage::deserialize(descriptor::<M>()?, &mut deserializer)
        .and_then(|m| deserializer.end().map(|()| m))
        .map_err(json_error)?;
    dynamic
        .transcode_to::<M>()
        .map_err(|e| fail(format!("not a {}: {e}", M::NAME)))
}

/// A serde_json error without its " at line 1 column 9" suffix (the caller knows the line),
/// keeping the column.
pub fn json_error(e: serde_json::Error) -> CliError {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(message) if e.column() > 0 => fail(format!("column {}: {message}", e.column())),
        Some(message) => fail(message.to_string()),
        None => fail(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{UserEvent, UserEventType, any_from_json};

    #[test]
    fn events_print_in_the_canonical_mapping_and_read_back() {
        let event = UserEvent {
            id: "e1".into(),
            user_id: "u1".into(),
            r#type: UserEventType::Login as i32,
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_767_225_600,
                nanos: 5_000_000,
            }),
            data: Some(any_from_json(&serde_json::json!({"ip": "10.0.0.1"}))),
            sequence: 7,
        };
        let line = to_json(&event).expect("prints");
        let json: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        assert_eq!(
            json,
            serde_json::json!({
                "id": "e1",
                "userId": "u1",
                "type": "USER_EVENT_TYPE_LOGIN",
                "timestamp": "2026-01-01T00:00:00.005Z",
                "data": {
                    "@type": "type.googleapis.com/google.protobuf.Value",
                    "value": {"ip": "10.0.0.1"}
                },
                "sequence": "7"
            })
        );
        assert_eq!(from_json::<UserEvent>(&line).expect("reads"), event);
        let snake = r#"{"user_id": "u2", "type": "USER_EVENT_TYPE_LOGOUT"}"#;
        assert_eq!(from_json::<UserEvent>(snake).expect("reads").user_id, "u2");
    }

    #[test]
    fn errors_name_no_line() {
        let err = from_json::<UserEvent>(r#"{"userId": 5}"#).unwrap_err().0;
        assert!(!err.contains("line"), "{err}");
        let err = from_json::<UserEvent>("{").unwrap_err().0;
        assert!(!err.contains("line"), "{err}");
    }
}
