//! Helpers for user-event streams shared by the event and engine tests: open a stream, read its
//! next event with a deadline. They fail the test with what went wrong; they never sleep.

use super::Client;
use std::time::Duration;
use streamhub::proto::{StreamUserEventsRequest, UserEvent};
use tonic::codec::Streaming;

/// A live (replay, then tail) request for `user`'s events from the start.
pub fn live(user: &str) -> StreamUserEventsRequest {
    StreamUserEventsRequest {
        user_id: user.to_string(),
        ..Default::default()
    }
}

pub async fn open(client: &mut Client, request: StreamUserEventsRequest) -> Streaming<UserEvent> {
    client
        .stream_user_events(request.clone())
        .await
        .unwrap_or_else(|s| panic!("StreamUserEvents {request:?} failed: {s:?}"))
        .into_inner()
}

/// The next event of an open stream; fails on an error, an end, or 20 s of silence.
pub async fn next_event(stream: &mut Streaming<UserEvent>) -> UserEvent {
    match tokio::time::timeout(Duration::from_secs(20), stream.message()).await {
        Err(_) => panic!("no event within 20 s"),
        Ok(Err(status)) => panic!("stream failed: {status:?}"),
        Ok(Ok(None)) => panic!("stream ended early"),
        Ok(Ok(Some(event))) => event,
    }
}
