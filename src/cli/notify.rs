//! `streamhub notify`: notifications.

use super::{CliResult, Connect, fail};
use clap::Args;

#[derive(Debug, Args)]
pub struct NotifyArgs {
    #[command(flatten)]
    pub connect: Connect,
}

pub async fn run(_args: NotifyArgs) -> CliResult<()> {
    Err(fail("notify is not built yet"))
}
