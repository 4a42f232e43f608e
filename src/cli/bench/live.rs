//! `streamhub bench live`: live processing.

use super::super::{CliResult, Connect, fail};
use clap::Args;

#[derive(Debug, Args)]
pub struct LiveBench {}

pub async fn run(_connect: &Connect, _pid: Option<u32>, _bench: LiveBench) -> CliResult<()> {
    Err(fail("bench live is not built yet"))
}
