//! `streamhub bench metrics`: metrics.

use super::super::{CliResult, Connect, fail};
use clap::Args;

#[derive(Debug, Args)]
pub struct MetricsBench {}

pub async fn run(_connect: &Connect, _pid: Option<u32>, _bench: MetricsBench) -> CliResult<()> {
    Err(fail("bench metrics is not built yet"))
}
