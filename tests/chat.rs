//! Chat rooms and history against the real server.

mod common;

use common::TestServer;
use std::time::Duration;
use streamhub::proto::{ChatMessage, ChatMessageType, GetChatHistoryRequest};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

fn text(room: &str, user: &str, content: &str) -> ChatMessage {
    ChatMessage {
        room_id: room.into(),
        user_id: user.into(),
        content: content.into(),
        r#type: ChatMessageType::Text as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_member_gets_its_join_notice_and_its_own_message_then_leaves() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let (tx, rx) = mpsc::channel(16);
    tx.send(ChatMessage {
        room_id: "r".into(),
        user_id: "ann".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut replies = client
        .chat(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let joined = replies.next().await.unwrap().unwrap();
    assert_eq!(joined.r#type, ChatMessageType::System as i32);
    assert_eq!(joined.content, "User ann joined the chat");
    assert_eq!(joined.sequence, 1);
    tx.send(text("r", "ann", "hello")).await.unwrap();
    let echo = replies.next().await.unwrap().unwrap();
    assert_eq!((echo.sequence, echo.content.as_str()), (2, "hello"));
    drop(tx);
    // A half-close drains the room through the member's own leave notice, then ends with OK.
    let left = replies.next().await.unwrap().unwrap();
    assert_eq!(
        (left.sequence, left.content.as_str()),
        (3, "User ann left the chat")
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(5), replies.next())
            .await
            .unwrap()
            .is_none()
    );
    let history = client
        .get_chat_history(GetChatHistoryRequest {
            room_id: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let contents: Vec<_> = history
        .messages
        .iter()
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(
        contents,
        [
            "User ann joined the chat",
            "hello",
            "User ann left the chat"
        ]
    );
    assert!(!history.has_more);
}
