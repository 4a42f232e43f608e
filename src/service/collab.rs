//! The collaboration relay: Collaborate.

use super::ResponseStream;
use crate::cancel::ClientCancelled;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::proto;
use tonic::Streaming;

/// The collaboration capability.
#[derive(Debug, Clone)]
pub struct Collab {
    #[allow(dead_code)]
    log: Log,
}

impl Collab {
    pub fn new(log: Log, _config: &Config) -> Self {
        Collab { log }
    }

    pub async fn session(
        &self,
        _inbound: Streaming<proto::CollaborationEvent>,
        _cancelled: ClientCancelled,
    ) -> Result<ResponseStream<proto::CollaborationEvent>> {
        Err(Error::Unimplemented("Collaborate"))
    }
}
