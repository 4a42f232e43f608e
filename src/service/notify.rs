//! The notification inbox: SubscribeToNotifications, PublishNotification and
//! AcknowledgeNotifications. An inbox is the keyed log stream `(notifications, user_id)` with an
//! acknowledged cursor beside it.

use super::ResponseStream;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::proto;

/// The notification capability.
#[derive(Debug, Clone)]
pub struct Notify {
    #[allow(dead_code)]
    log: Log,
}

impl Notify {
    pub fn new(log: Log, _config: &Config) -> Self {
        Notify { log }
    }

    pub async fn subscribe(
        &self,
        _request: proto::SubscribeRequest,
    ) -> Result<ResponseStream<proto::Notification>> {
        Err(Error::Unimplemented("SubscribeToNotifications"))
    }

    pub async fn publish(
        &self,
        _request: proto::PublishNotificationRequest,
    ) -> Result<proto::Notification> {
        Err(Error::Unimplemented("PublishNotification"))
    }

    pub async fn acknowledge(
        &self,
        _request: proto::AcknowledgeNotificationsRequest,
    ) -> Result<proto::AcknowledgeNotificationsResponse> {
        Err(Error::Unimplemented("AcknowledgeNotifications"))
    }
}
