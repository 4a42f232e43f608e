//! `streamhub bench notify`: notifications.

use super::super::{CliResult, Connect, fail};
use clap::Args;

#[derive(Debug, Args)]
pub struct NotifyBench {}

pub async fn run(_connect: &Connect, _pid: Option<u32>, _bench: NotifyBench) -> CliResult<()> {
    Err(fail("bench notify is not built yet"))
}
