//! Metrics: CollectMetrics (a client stream committed in small groups as it arrives) and
//! QueryMetrics (bucketed count/min/max/sum per series).

use crate::cancel::ClientCancelled;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::log::Log;
use crate::proto;
use tonic::Streaming;

/// The metrics capability.
#[derive(Debug, Clone)]
pub struct Metrics {
    #[allow(dead_code)]
    log: Log,
}

impl Metrics {
    pub fn new(log: Log, _config: &Config) -> Self {
        Metrics { log }
    }

    pub async fn collect(
        &self,
        _points: Streaming<proto::MetricData>,
        _cancelled: ClientCancelled,
    ) -> Result<proto::MetricsCollectionResult> {
        Err(Error::Unimplemented("CollectMetrics"))
    }

    pub async fn query(
        &self,
        _request: proto::QueryMetricsRequest,
    ) -> Result<proto::QueryMetricsResponse> {
        Err(Error::Unimplemented("QueryMetrics"))
    }
}
