//! `wasmos bundle push` and `wasmos blob get`: components up, stored blobs (task outputs) down.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;

use crate::connect::Target;
use wasmos_proto::BlobKind;

#[derive(Subcommand)]
pub(crate) enum BundleCmd {
    /// Check and upload a component (skipped if the master has it); prints its sha256.
    Push { file: PathBuf },
}

#[derive(Subcommand)]
pub(crate) enum BlobCmd {
    /// Download a blob (a task's output file, as `task show` lists them) by its sha256.
    Get {
        hash: String,
        /// Write it to this file instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

/// Reads and checks a component file before anything is sent anywhere.
pub(crate) fn load_component(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    wasmos_exec::validate_component(
        &bytes,
        wasmos_exec::ExecConfig::default().max_component_bytes,
    )
    .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(bytes)
}

pub(crate) async fn bundle(target: &Target, cmd: BundleCmd) -> Result<ExitCode> {
    let BundleCmd::Push { file } = cmd;
    let bytes = load_component(&file)?;
    let client = target.connect().await?;
    let pushed = client.push_blob(&bytes, BlobKind::Component).await;
    client.close().await;
    let (hash, uploaded) = pushed?;
    let note = if uploaded {
        "uploaded"
    } else {
        "already there"
    };
    eprintln!("{}: {note}", file.display());
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn blob(target: &Target, cmd: BlobCmd) -> Result<ExitCode> {
    let BlobCmd::Get { hash, output } = cmd;
    let hash = wasmos_proto::BundleHash::parse(&hash)?;
    let client = target.connect().await?;
    let bytes = client.get_blob(&hash).await;
    client.close().await;
    let bytes = bytes?;
    match output {
        Some(path) => std::fs::write(&path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::Write::write_all(&mut std::io::stdout(), &bytes)
            .context("cannot write to standard output")?,
    }
    Ok(ExitCode::SUCCESS)
}
