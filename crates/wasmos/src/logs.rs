//! `wasmos logs [-f]`: a task's output, followed until it ends with `-f`.

use std::process::ExitCode;

use anyhow::Result;

use crate::connect::Target;
use crate::run::write_output;
use crate::task::parse_id;

pub(crate) async fn logs_cmd(target: &Target, id: &str, follow: bool) -> Result<ExitCode> {
    let id = parse_id(id)?;
    let client = target.connect().await?;
    client.watch(id, follow, write_output).await?;
    client.close().await;
    Ok(ExitCode::SUCCESS)
}
