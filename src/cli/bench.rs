//! `streamhub bench …`: load generators that print throughput and latency tables.
use super::CliResult;
use clap::Args;
#[derive(Debug, Args)]
pub struct BenchArgs {}
pub async fn run(_args: BenchArgs) -> CliResult<()> { Err(super::fail("todo")) }
