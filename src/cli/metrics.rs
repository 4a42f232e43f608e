//! `streamhub metrics`: metrics.

use super::{CliResult, Connect, fail};
use clap::Args;

#[derive(Debug, Args)]
pub struct MetricsArgs {
    #[command(flatten)]
    pub connect: Connect,
}

pub async fn run(_args: MetricsArgs) -> CliResult<()> {
    Err(fail("metrics is not built yet"))
}
