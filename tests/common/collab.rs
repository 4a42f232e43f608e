//! Collaboration helpers shared by the Collaborate tests (tests/collab.rs) and its browser
//! twins (tests/browser_collab.rs): event builders, the row shape the assertions compare, and a
//! document's stored operations, read straight from the store.

use super::TestServer;
use streamhub::proto::{CollaborationEvent, CollaborationEventType};
use streamhub::service::collab::operation_from_record;
use streamhub::store::{StreamKey, StreamKind};

use CollaborationEventType::{Cursor, Join, Leave, Operation, Rejected};

pub fn op(
    doc: &str,
    user: &str,
    id: &str,
    payload: &[u8],
    base: Option<u64>,
) -> CollaborationEvent {
    CollaborationEvent {
        id: id.into(),
        document_id: doc.into(),
        user_id: user.into(),
        r#type: Operation as i32,
        payload: payload.to_vec(),
        base_sequence: base,
        ..Default::default()
    }
}

pub fn cursor(doc: &str, user: &str, payload: &[u8]) -> CollaborationEvent {
    CollaborationEvent {
        document_id: doc.into(),
        user_id: user.into(),
        r#type: Cursor as i32,
        payload: payload.to_vec(),
        ..Default::default()
    }
}

pub fn kind_name(kind: i32) -> &'static str {
    match CollaborationEventType::try_from(kind) {
        Ok(Join) => "join",
        Ok(Leave) => "leave",
        Ok(Operation) => "op",
        Ok(Cursor) => "cursor",
        Ok(Rejected) => "rejected",
        Ok(CollaborationEventType::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

/// An event as (type, sequence, user, id, payload): what the assertions compare.
pub type Row = (&'static str, u64, String, String, Vec<u8>);

pub fn row(e: &CollaborationEvent) -> Row {
    (
        kind_name(e.r#type),
        e.sequence,
        e.user_id.clone(),
        e.id.clone(),
        e.payload.clone(),
    )
}

pub fn rows(es: &[CollaborationEvent]) -> Vec<Row> {
    es.iter().map(row).collect()
}

/// A presence event (JOIN, LEAVE) or a cursor as the assertions compare it.
pub fn signal(kind: &'static str, user: &str, payload: &[u8]) -> Row {
    (kind, 0, user.into(), String::new(), payload.to_vec())
}

pub fn stored_op(sequence: u64, user: &str, id: &str, payload: &[u8]) -> Row {
    ("op", sequence, user.into(), id.into(), payload.to_vec())
}

/// The document's stored operations, read straight from the store.
pub async fn stored_log(server: &TestServer, doc: &str) -> Vec<CollaborationEvent> {
    let records = server
        .log
        .store
        .read_page(&StreamKey::new(StreamKind::Collab, doc), 0, None, 100_000)
        .await
        .expect("read the log");
    records
        .iter()
        .map(|r| operation_from_record(r).expect("decode"))
        .collect()
}
