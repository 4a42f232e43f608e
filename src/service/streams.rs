//! ListStreams: the console's stream browser. It lists the streams of one kind (users' event
//! streams, notification inboxes, chat rooms, collaboration documents) that hold at least one
//! record, in the bytewise order of their keys, filtered by a key prefix and paged by an opaque
//! token, each with its head and the timestamp of its last record.
//!
//! This module owns the listing's rules: who may list (services; anyone with auth off), what a
//! valid request is, the page size, and what a page token holds. It never writes SQL (the store
//! lists, with one index range scan), never reads records, and never lets a user token see the
//! names of other users' streams.

use super::MAX_KEY_BYTES;
use crate::auth::{Identity, Role};
use crate::error::{Error, Result};
use crate::proto::{self, ListStreamsRequest, ListStreamsResponse, StreamInfo};
use crate::store::{KeyRange, Store, StreamKind};

/// Streams in a page when the request leaves `limit` at 0.
pub const DEFAULT_LIMIT: u32 = 100;
/// Most streams in one page: a larger `limit` is lowered to this, as GetChatHistory lowers its
/// own, so a client asking for "everything" still gets pages it can page through.
pub const MAX_LIMIT: u32 = 1000;

/// The listing capability. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Streams {
    store: Store,
}

/// The store's kind of a request's `kind`: UNSPECIFIED, or a value this server does not know,
/// is the client's mistake.
fn kind_of(kind: i32) -> Result<StreamKind> {
    match proto::StreamKind::try_from(kind) {
        Ok(proto::StreamKind::Events) => Ok(StreamKind::Events),
        Ok(proto::StreamKind::Notifications) => Ok(StreamKind::Notifications),
        Ok(proto::StreamKind::Chat) => Ok(StreamKind::Chat),
        Ok(proto::StreamKind::Collaboration) => Ok(StreamKind::Collab),
        Ok(proto::StreamKind::Unspecified) => Err(Error::invalid(
            "kind is required: STREAM_KIND_EVENTS, STREAM_KIND_NOTIFICATIONS, STREAM_KIND_CHAT \
             or STREAM_KIND_COLLABORATION",
        )),
        Err(_) => Err(Error::invalid(format!(
            "kind {kind} is not a stream kind this server knows"
        ))),
    }
}

/// With auth on, only a service token lists streams: a listing names every user, room and
/// document of its kind, while a user token may read only what its claims open.
fn may_list(identity: Option<&Identity>) -> Result<()> {
    match identity {
        Some(identity) if identity.role != Role::Service => Err(Error::PermissionDenied(
            "listing streams needs a service token".into(),
        )),
        _ => Ok(()),
    }
}

/// A prefix is plain text that a key could start with: at most as long as a key, and free of
/// control characters, which no key holds. An empty prefix lists the whole kind.
fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.len() > MAX_KEY_BYTES {
        return Err(Error::invalid(format!(
            "key_prefix is longer than {MAX_KEY_BYTES} bytes"
        )));
    }
    if prefix.chars().any(char::is_control) {
        return Err(Error::invalid(
            "key_prefix must not contain control characters",
        ));
    }
    Ok(())
}

/// A page token: lowercase hex of the kind's code (one byte) and the bytes of the last key
/// listed. The next page starts after that key, so streams created meanwhile are found in key
/// order and none is listed twice. Opaque to clients; it carries no secret.
fn encode_token(kind: StreamKind, key: &str) -> String {
    let mut token = String::with_capacity(2 + 2 * key.len());
    for byte in std::iter::once(kind.code() as u8).chain(key.bytes()) {
        token.push(char::from(HEX[usize::from(byte >> 4)]));
        token.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    token
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The last key of the page before, from a token [`encode_token`] made for a listing of `kind`.
fn decode_token(kind: StreamKind, token: &str) -> Result<String> {
    let malformed = || Error::invalid("page_token is not one that ListStreams gave");
    if !token.len().is_multiple_of(2) || token.len() > 2 * (1 + MAX_KEY_BYTES) {
        return Err(malformed());
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(malformed()),
    };
    let bytes = token
        .as_bytes()
        .chunks_exact(2)
        .map(|pair| Ok(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect::<Result<Vec<u8>>>()?;
    let (&code, key) = bytes.split_first().ok_or_else(malformed)?;
    if i64::from(code) != kind.code() {
        return Err(Error::invalid(
            "page_token belongs to a listing of another kind",
        ));
    }
    let key = String::from_utf8(key.to_vec()).map_err(|_| malformed())?;
    if key.is_empty() || key.chars().any(char::is_control) {
        return Err(malformed());
    }
    Ok(key)
}

impl Streams {
    pub fn new(store: Store) -> Self {
        Streams { store }
    }

    /// ListStreams: one page of the streams of a kind that hold records, by key.
    pub async fn list(
        &self,
        request: ListStreamsRequest,
        identity: Option<&Identity>,
    ) -> Result<ListStreamsResponse> {
        may_list(identity)?;
        let kind = kind_of(request.kind)?;
        validate_prefix(&request.key_prefix)?;
        let after = match request.page_token.as_str() {
            "" => None,
            token => Some(decode_token(kind, token)?),
        };
        let limit = match request.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        };
        let range = KeyRange::prefixed(&request.key_prefix, after.as_deref());
        // One more than the page, to tell whether another page follows without a second call:
        // the last page then says so with an empty token, even when it is full.
        let mut listed = self.store.list_streams(kind, &range, limit + 1).await?;
        let more = listed.len() > limit as usize;
        listed.truncate(limit as usize);
        let next_page_token = match listed.last() {
            Some(last) if more => encode_token(kind, &last.key),
            _ => String::new(),
        };
        Ok(ListStreamsResponse {
            streams: listed
                .into_iter()
                .map(|stream| StreamInfo {
                    key: stream.key,
                    head: stream.head,
                    last_timestamp: Some(proto::timestamp_from_micros(stream.last_ts_micros)),
                })
                .collect(),
            next_page_token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_what_they_did_not_make() {
        for key in ["u1", "a%_b", "é ü", &"k".repeat(MAX_KEY_BYTES)] {
            let token = encode_token(StreamKind::Chat, key);
            assert!(token.starts_with("03"), "{token}");
            assert_eq!(decode_token(StreamKind::Chat, &token).unwrap(), key);
            assert!(decode_token(StreamKind::Events, &token).is_err());
        }
        for bad in [
            "0",
            "03",
            "zz",
            "0361x",
            "03FF",
            "0361\u{e9}",
            "0300",
            "03ff",
            "0361 ",
        ] {
            assert!(decode_token(StreamKind::Chat, bad).is_err(), "{bad:?}");
        }
        let too_long = encode_token(StreamKind::Chat, &"k".repeat(MAX_KEY_BYTES + 1));
        assert!(decode_token(StreamKind::Chat, &too_long).is_err());
    }
}
