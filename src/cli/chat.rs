//! `streamhub chat`: chat rooms.

use super::{CliResult, Connect, fail};
use clap::Args;

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub connect: Connect,
}

pub async fn run(_args: ChatArgs) -> CliResult<()> {
    Err(fail("chat is not built yet"))
}
