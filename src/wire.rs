//! Responses encoded straight from stored bytes.
//!
//! A user event is stored as its encoded `UserEvent` body without the server's fields (`type`
//! and `data` only). On the way out, [`UserEventOut`] writes the server's fields (`id`,
//! `user_id`, `timestamp`, `sequence`) around that body as protobuf bytes: a replay never decodes
//! a stored event and encodes it again. Protobuf lets fields come in any order, so every client
//! decodes the same `UserEvent` it would have decoded from one built field by field. This module
//! only encodes; it must never be used to read a request.

use bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint};
use prost::{DecodeError, Message};
use std::sync::Arc;

/// A `streaming.v1.UserEvent` on its way to a client.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserEventOut {
    /// Field 1.
    pub id: String,
    /// Field 2: shared with the stream it comes from.
    pub user_id: Arc<str>,
    /// Fields 3 (`type`) and 5 (`data`), encoded, exactly as stored.
    pub body: Vec<u8>,
    /// Field 4, in microseconds since the Unix epoch.
    pub ts_micros: i64,
    /// Field 6.
    pub sequence: u64,
}

fn string_len(tag: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        prost::encoding::key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
    }
}

fn encode_string(tag: u32, value: &str, buf: &mut impl BufMut) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.put_slice(value.as_bytes());
    }
}

impl UserEventOut {
    fn timestamp(&self) -> prost_types::Timestamp {
        crate::proto::timestamp_from_micros(self.ts_micros)
    }

    /// The event's `type` (field 3 of the stored body), without decoding its data; 0 when the
    /// body does not set it.
    pub fn event_type(&self) -> i32 {
        let mut body = self.body.as_slice();
        let mut found = 0;
        while body.has_remaining() {
            let Ok((tag, wire_type)) = prost::encoding::decode_key(&mut body) else {
                return found;
            };
            if tag == 3 && wire_type == WireType::Varint {
                match prost::encoding::decode_varint(&mut body) {
                    // Like prost: the last occurrence of a field wins.
                    Ok(value) => found = value as i32,
                    Err(_) => return found,
                }
            } else if prost::encoding::skip_field(
                wire_type,
                tag,
                &mut body,
                DecodeContext::default(),
            )
            .is_err()
            {
                return found;
            }
        }
        found
    }
}

impl Message for UserEventOut {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encode_string(1, &self.id, buf);
        encode_string(2, &self.user_id, buf);
        prost::encoding::message::encode(4, &self.timestamp(), buf);
        buf.put_slice(&self.body);
        if self.sequence != 0 {
            prost::encoding::uint64::encode(6, &self.sequence, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        // Outgoing only: nothing ever decodes into this type.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        string_len(1, &self.id)
            + string_len(2, &self.user_id)
            + prost::encoding::message::encoded_len(4, &self.timestamp())
            + self.body.len()
            + if self.sequence != 0 {
                prost::encoding::uint64::encoded_len(6, &self.sequence)
            } else {
                0
            }
    }

    fn clear(&mut self) {
        *self = UserEventOut::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{UserEvent, UserEventType};

    #[test]
    fn decodes_as_the_event_built_field_by_field() {
        let data = prost_types::Any {
            type_url: "type.googleapis.com/x".into(),
            value: vec![7; 80],
        };
        let full = UserEvent {
            id: "0190a0b0-c0d0-7000-8000-000000000001".into(),
            user_id: "alice".into(),
            r#type: UserEventType::ProfileUpdate as i32,
            timestamp: Some(crate::proto::timestamp_from_micros(1_796_000_000_123_456)),
            data: Some(data.clone()),
            sequence: 42,
        };
        let body = UserEvent {
            r#type: full.r#type,
            data: Some(data),
            ..Default::default()
        }
        .encode_to_vec();
        let out = UserEventOut {
            id: full.id.clone(),
            user_id: Arc::from("alice"),
            body,
            ts_micros: 1_796_000_000_123_456,
            sequence: 42,
        };
        let bytes = out.encode_to_vec();
        assert_eq!(bytes.len(), out.encoded_len());
        assert_eq!(UserEvent::decode(bytes.as_slice()).unwrap(), full);
        assert_eq!(out.event_type(), UserEventType::ProfileUpdate as i32);
        // Empty strings and a zero sequence are left out, as prost leaves them out.
        let bare = UserEventOut::default();
        assert_eq!(
            UserEvent::decode(bare.encode_to_vec().as_slice()).unwrap(),
            UserEvent {
                timestamp: Some(crate::proto::timestamp_from_micros(0)),
                ..Default::default()
            }
        );
    }
}
