//! Durable chat rooms: Chat and GetChatHistory.

use super::ResponseStream;
use crate::cancel::ClientCancelled;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::proto;
use tonic::Streaming;

/// The chat capability.
#[derive(Debug, Clone)]
pub struct Chat {
    #[allow(dead_code)]
    log: Log,
}

impl Chat {
    pub fn new(log: Log, _config: &Config) -> Self {
        Chat { log }
    }

    pub async fn session(
        &self,
        _inbound: Streaming<proto::ChatMessage>,
        _cancelled: ClientCancelled,
    ) -> Result<ResponseStream<proto::ChatMessage>> {
        Err(Error::Unimplemented("Chat"))
    }

    pub async fn history(
        &self,
        _request: proto::GetChatHistoryRequest,
    ) -> Result<proto::GetChatHistoryResponse> {
        Err(Error::Unimplemented("GetChatHistory"))
    }
}
