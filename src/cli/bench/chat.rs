//! `streamhub bench chat`: chat rooms.

use super::super::{CliResult, Connect, fail};
use clap::Args;

#[derive(Debug, Args)]
pub struct ChatBench {}

pub async fn run(_connect: &Connect, _pid: Option<u32>, _bench: ChatBench) -> CliResult<()> {
    Err(fail("bench chat is not built yet"))
}
