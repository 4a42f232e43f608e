//! Chat helpers shared by the Chat tests (tests/chat.rs) and its browser twins
//! (tests/browser_chat.rs): message builders, the row shape the assertions compare, and the whole
//! history of a room, read through GetChatHistory.

use super::{Client, poll_until};
use std::time::Duration;
use streamhub::proto::{ChatMessage, ChatMessageType, GetChatHistoryRequest};

pub fn message(room: &str, user: &str, kind: ChatMessageType, content: &str) -> ChatMessage {
    ChatMessage {
        room_id: room.into(),
        user_id: user.into(),
        content: content.into(),
        r#type: kind as i32,
        ..Default::default()
    }
}

pub fn text(room: &str, user: &str, content: &str) -> ChatMessage {
    message(room, user, ChatMessageType::Text, content)
}

pub fn text_with_id(room: &str, user: &str, id: &str, content: &str) -> ChatMessage {
    ChatMessage {
        id: id.into(),
        ..text(room, user, content)
    }
}

pub fn typing(room: &str, user: &str, content: &str) -> ChatMessage {
    message(room, user, ChatMessageType::Typing, content)
}

pub fn joined(user: &str) -> String {
    format!("User {user} joined the chat")
}

pub fn left(user: &str) -> String {
    format!("User {user} left the chat")
}

pub fn kind_name(kind: i32) -> &'static str {
    match ChatMessageType::try_from(kind) {
        Ok(ChatMessageType::Text) => "text",
        Ok(ChatMessageType::Image) => "image",
        Ok(ChatMessageType::File) => "file",
        Ok(ChatMessageType::System) => "system",
        Ok(ChatMessageType::Typing) => "typing",
        Ok(ChatMessageType::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

/// A message as (sequence, type, author, content): what the assertions compare.
pub type Row = (u64, &'static str, String, String);

pub fn row(m: &ChatMessage) -> Row {
    (
        m.sequence,
        kind_name(m.r#type),
        m.user_id.clone(),
        m.content.clone(),
    )
}

pub fn rows(ms: &[ChatMessage]) -> Vec<Row> {
    ms.iter().map(row).collect()
}

pub fn stored(seq: u64, kind: &'static str, user: &str, content: &str) -> Row {
    (seq, kind, user.to_string(), content.to_string())
}

pub fn sys(seq: u64, user: &str, what: &str) -> Row {
    let content = if what == "joined" {
        joined(user)
    } else {
        left(user)
    };
    (seq, "system", user.to_string(), content)
}

pub fn seqs(ms: &[ChatMessage]) -> Vec<u64> {
    ms.iter().map(|m| m.sequence).collect()
}

/// The whole room, oldest first.
pub async fn history(client: &mut Client, room: &str) -> Vec<ChatMessage> {
    let mut all = Vec::new();
    let mut before = 0;
    loop {
        let reply = client
            .get_chat_history(GetChatHistoryRequest {
                room_id: room.into(),
                before_sequence: before,
                limit: 500,
            })
            .await
            .expect("GetChatHistory")
            .into_inner();
        let mut messages = reply.messages;
        let oldest = messages.first().map(|m| m.sequence);
        messages.append(&mut all);
        all = messages;
        match (reply.has_more, oldest) {
            (true, Some(oldest)) => before = oldest,
            _ => return all,
        }
    }
}

/// Waits until the room's history has `len` messages and returns it: a session stores its
/// leave after its stream is gone, so a read right after the drop can come too early.
pub async fn history_reaches(client: &Client, room: &str, len: usize) -> Vec<ChatMessage> {
    poll_until(
        &format!("{len} messages in the history of {room}"),
        Duration::from_secs(15),
        || {
            let mut client = client.clone();
            async move {
                let all = history(&mut client, room).await;
                if all.len() >= len {
                    Ok(all)
                } else {
                    Err(format!("{:?}", rows(&all)))
                }
            }
        },
    )
    .await
}
