//! `wasmos bundle push/keygen/sign` and `wasmos blob get`: components (and their signatures)
//! up, stored blobs (task outputs) down.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;

use crate::connect::Target;
use wasmos_proto::BlobKind;

#[derive(Subcommand)]
pub(crate) enum BundleCmd {
    /// Check and upload a component (skipped if the master has it) with its signatures;
    /// prints its sha256.
    Push {
        file: PathBuf,
        /// A signature file (`wasmos bundle sign`) to send with it; repeatable. Default:
        /// FILE.sig when it exists.
        #[arg(long, value_name = "SIG")]
        signature: Vec<PathBuf>,
        /// Send no signature, even if FILE.sig exists.
        #[arg(long, conflicts_with = "signature")]
        unsigned: bool,
    },
    /// What a component is, read locally: the world it targets, its imports and exports, its
    /// size and hash, and whether this cluster can run it (and if not, why).
    Inspect {
        file: PathBuf,
        #[command(flatten)]
        out: crate::output::OutputArg,
    },
    /// Make an ed25519 signing key pair: NAME.key (private) and NAME.pub; prints the key's id.
    Keygen { name: PathBuf },
    /// Sign a component with a private key (`keygen`'s, or openssl's ed25519 PEM): writes
    /// FILE.sig, which `push` sends along.
    Sign {
        file: PathBuf,
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// Where to write the signature (default FILE.sig).
        #[arg(short, long, value_name = "SIG")]
        output: Option<PathBuf>,
    },
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
    let (file, signatures, unsigned) = match cmd {
        BundleCmd::Push {
            file,
            signature,
            unsigned,
        } => (file, signature, unsigned),
        BundleCmd::Inspect { file, out } => return inspect(&file, out.format),
        BundleCmd::Keygen { name } => return crate::signing::keygen(&name),
        BundleCmd::Sign { file, key, output } => return crate::signing::sign(&file, &key, output),
    };
    let bytes = load_component(&file)?;
    let hash = crate::signing::bundle_hash(&bytes);
    // Signature files are read and matched to the file before anything is sent.
    let beside = crate::signing::signature_path(&file);
    let paths = match signatures.is_empty() && !unsigned && beside.is_file() {
        true => vec![beside],
        false => signatures,
    };
    let sigs = paths
        .iter()
        .map(|p| crate::signing::read_signature(p, &hash))
        .collect::<Result<Vec<_>>>()?;
    let client = target.connect().await?;
    let pushed = push_signed(&client, &bytes, sigs.clone()).await;
    client.close().await;
    let (hash, uploaded) = pushed?;
    let note = if uploaded {
        "uploaded"
    } else {
        "already there"
    };
    eprintln!("{}: {note}", file.display());
    for s in &sigs {
        eprintln!("{}: signed by {}", file.display(), s.key);
    }
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}

/// What `bundle inspect` tells of a component.
#[derive(serde::Serialize)]
struct Inspected {
    file: String,
    size: u64,
    sha256: String,
    /// `wasmos:task/task` when it imports the platform's interfaces, `wasi:cli/command` for a
    /// plain WASI command, `unknown` otherwise.
    world: String,
    imports: Vec<String>,
    exports: Vec<String>,
    /// Whether this cluster can run it, and if not, why.
    runs_here: bool,
    refused: Option<String>,
}

/// `wasmos bundle inspect`: read locally, nothing sent.
fn inspect(file: &Path, format: crate::output::Format) -> Result<ExitCode> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let (imports, exports) = wasmos_proto::component_interface(&bytes)
        .map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let refused = wasmos_exec::validate_component(
        &bytes,
        wasmos_exec::ExecConfig::default().max_component_bytes,
    )
    .err()
    .map(|e| e.to_string())
    .or_else(|| {
        (!exports.iter().any(|e| e.starts_with("wasi:cli/run@0.2.")))
            .then(|| "it exports no wasi:cli/run@0.2: it is not a WASI command".to_string())
    });
    let platform = format!("{}/", wasmos_proto::TASK_PACKAGE);
    let world = if imports.iter().any(|i| i.starts_with(&platform)) {
        format!("{}/task", wasmos_proto::TASK_PACKAGE)
    } else if exports.iter().any(|e| e.starts_with("wasi:cli/run@")) {
        "wasi:cli/command".to_string()
    } else {
        "unknown".to_string()
    };
    let seen = Inspected {
        file: file.display().to_string(),
        size: bytes.len() as u64,
        sha256: crate::signing::bundle_hash(&bytes).to_string(),
        world,
        imports,
        exports,
        runs_here: refused.is_none(),
        refused,
    };
    match format {
        crate::output::Format::Json => crate::output::print_json(&seen)?,
        crate::output::Format::Table => {
            println!("file:      {}", seen.file);
            println!("size:      {}", wasmos_proto::format_bytes(seen.size));
            println!("sha256:    {}", seen.sha256);
            println!("world:     {}", seen.world);
            println!("imports:   {}", seen.imports.len());
            for i in &seen.imports {
                println!("  {i}");
            }
            println!("exports:   {}", seen.exports.len());
            for e in &seen.exports {
                println!("  {e}");
            }
            match &seen.refused {
                None => println!("runs here: yes"),
                Some(why) => println!("runs here: no: {why}"),
            }
        }
    }
    Ok(match seen.runs_here {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    })
}

/// Uploads a component file with the signature beside it (FILE.sig), when there is one: what
/// `wasmos run` and `wasmos job submit` do with the components they name.
pub(crate) async fn push_component(
    client: &wasmos_client::Client,
    file: &Path,
    bytes: &[u8],
) -> Result<(wasmos_proto::BundleHash, bool)> {
    let beside = crate::signing::signature_path(file);
    if !beside.is_file() {
        return Ok(client.push_blob(bytes, BlobKind::Component).await?);
    }
    // Found, not asked for: a signature the masters refuse (an old one, a revoked key) is
    // said and skipped. If the task's role needs one, the submission says so next.
    let pushed = client.push_blob(bytes, BlobKind::Component).await?;
    let sig = crate::signing::read_signature(&beside, &pushed.0);
    let added = match sig {
        Ok(signature) => client
            .request(wasmos_proto::ClientRequest::SignBundle {
                hash: pushed.0.clone(),
                signature,
            })
            .await
            .map(|_| ())
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    if let Err(e) = added {
        eprintln!("warning: {} not sent: {e:#}", beside.display());
    }
    Ok(pushed)
}

/// Uploads a component, then adds each signature to its record.
pub(crate) async fn push_signed(
    client: &wasmos_client::Client,
    bytes: &[u8],
    sigs: Vec<wasmos_proto::BundleSignature>,
) -> Result<(wasmos_proto::BundleHash, bool)> {
    let (hash, uploaded) = client.push_blob(bytes, BlobKind::Component).await?;
    for signature in sigs {
        let key = signature.key.clone();
        client
            .request(wasmos_proto::ClientRequest::SignBundle {
                hash: hash.clone(),
                signature,
            })
            .await
            .with_context(|| format!("the signature by {key} was refused"))?;
    }
    Ok((hash, uploaded))
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
