//! Live processing: ProcessLiveData, per-key sliding-window statistics over a bidirectional
//! stream, one result per input in input order.

use super::ResponseStream;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::proto;
use tonic::Streaming;

/// The live-processing capability.
#[derive(Debug, Clone)]
pub struct Live {}

impl Live {
    pub fn new(_config: &Config) -> Self {
        Live {}
    }

    pub fn process(
        &self,
        _inputs: Streaming<proto::DataInput>,
    ) -> Result<ResponseStream<proto::ProcessingResult>> {
        Err(Error::Unimplemented("ProcessLiveData"))
    }
}
