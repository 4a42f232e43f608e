//! `streamhub live`: live processing.

use super::{CliResult, Connect, fail};
use clap::Args;

#[derive(Debug, Args)]
pub struct LiveArgs {
    #[command(flatten)]
    pub connect: Connect,
}

pub async fn run(_args: LiveArgs) -> CliResult<()> {
    Err(fail("live is not built yet"))
}
