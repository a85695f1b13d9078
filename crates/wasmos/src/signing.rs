//! Signed bundles from the command line: `wasmos bundle keygen/sign`, the signatures `bundle
//! push` sends, and `wasmos signing-key add/list/revoke` for operators.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmos_net::signing::{self, SigningKey};
use wasmos_proto::{BundleHash, BundleSignature, ClientRequest, ClientResponse};

use crate::connect::Target;
use crate::output::{OutputArg, list_or_dash, print_list};

/// What a `.sig` file holds: which bytes, which key, and the signature, so `push` can tell a
/// signature of other bytes before it sends anything.
#[derive(Serialize, Deserialize)]
pub(crate) struct SignatureFile {
    pub format: String,
    pub bundle: String,
    pub key: String,
    pub signature: String,
}

const SIGNATURE_FORMAT: &str = "wasmos-bundle-signature/1";

#[derive(Subcommand)]
pub(crate) enum SigningKeyCmd {
    /// Register a public key (PEM, as `wasmos bundle keygen` or `openssl pkey -pubout`
    /// writes it) that roles may require; prints its id.
    Add { public_key: PathBuf },
    /// The registered keys, revoked ones included, and the roles that require each.
    List(OutputArg),
    /// Revoke a key for good: bundles it signed no longer run where a signature is required.
    Revoke { key: String },
}

pub(crate) fn bundle_hash(bytes: &[u8]) -> BundleHash {
    BundleHash::from_digest(&Sha256::digest(bytes).into())
}

/// `wasmos bundle keygen NAME`: NAME.key (private, readable by its owner only) and NAME.pub.
pub(crate) fn keygen(name: &Path) -> Result<ExitCode> {
    let private_path = name.with_extension("key");
    let public_path = name.with_extension("pub");
    for p in [&private_path, &public_path] {
        if p.exists() {
            bail!("{} exists already; choose another name", p.display());
        }
    }
    let (private, public) = signing::generate()?;
    wasmos_net::write_private(&private_path, private.as_bytes())
        .with_context(|| format!("cannot write {}", private_path.display()))?;
    std::fs::write(&public_path, public.as_bytes())
        .with_context(|| format!("cannot write {}", public_path.display()))?;
    let id = signing::key_id(&signing::public_key_from_pem(public.as_bytes())?);
    eprintln!(
        "private key {} (keep it secret), public key {}",
        private_path.display(),
        public_path.display()
    );
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

/// `wasmos bundle sign FILE --key KEY`: writes FILE.sig (or `output`).
pub(crate) fn sign(file: &Path, key: &Path, output: Option<PathBuf>) -> Result<ExitCode> {
    let bytes = crate::bundle::load_component(file)?;
    let pem = std::fs::read(key).with_context(|| format!("cannot read {}", key.display()))?;
    let key = SigningKey::from_pem(&pem).with_context(|| format!("{}", key.display()))?;
    let hash = bundle_hash(&bytes);
    let sig = SignatureFile {
        format: SIGNATURE_FORMAT.into(),
        bundle: hash.to_string(),
        key: key.id(),
        signature: hex::encode(key.sign(&hash)),
    };
    let out = output.unwrap_or_else(|| signature_path(file));
    let mut text = serde_json::to_string_pretty(&sig)?;
    text.push('\n');
    std::fs::write(&out, text).with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "{}: signed by {} into {}",
        file.display(),
        sig.key,
        out.display()
    );
    println!("{hash}");
    Ok(ExitCode::SUCCESS)
}

/// Where `sign` writes a file's signature and `push` looks for it: FILE.sig.
pub(crate) fn signature_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sig");
    PathBuf::from(name)
}

/// Reads a signature file and checks it is one of `hash` (the file about to be pushed).
pub(crate) fn read_signature(path: &Path, hash: &BundleHash) -> Result<BundleSignature> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let sig: SignatureFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a signature file", path.display()))?;
    if sig.format != SIGNATURE_FORMAT {
        bail!(
            "{}: format `{}`, not {SIGNATURE_FORMAT}",
            path.display(),
            sig.format
        );
    }
    if sig.bundle != hash.as_str() {
        bail!(
            "{} signs bundle {}, not this file ({hash}): sign the file again",
            path.display(),
            sig.bundle
        );
    }
    let signature = hex::decode(&sig.signature)
        .with_context(|| format!("{}: the signature is not hex", path.display()))?;
    Ok(BundleSignature {
        key: sig.key,
        signature,
    })
}

pub(crate) async fn run(target: &Target, cmd: SigningKeyCmd) -> Result<ExitCode> {
    match cmd {
        SigningKeyCmd::Add { public_key } => {
            let pem = std::fs::read(&public_key)
                .with_context(|| format!("cannot read {}", public_key.display()))?;
            let public = signing::public_key_from_pem(&pem)
                .with_context(|| format!("{}", public_key.display()))?;
            match target.ask(ClientRequest::AddSigningKey { public }).await? {
                ClientResponse::SigningKeyAdded { id } => println!("{id}"),
                other => bail!("unexpected answer to signing-key add: {other:?}"),
            }
        }
        SigningKeyCmd::List(out) => {
            let ClientResponse::SigningKeys(keys) =
                target.ask(ClientRequest::ListSigningKeys).await?
            else {
                bail!("unexpected answer to signing-key list");
            };
            let now = crate::output::now_ms();
            let header = ["KEY", "STATE", "ROLES", "ADDED BY", "AGE"];
            print_list(out.format, &keys, &header, |k| {
                vec![
                    k.id.clone(),
                    match &k.revoked {
                        Some((by, at)) => {
                            format!("revoked by {by} {}", crate::output::age(now, *at))
                        }
                        None => "trusted".into(),
                    },
                    list_or_dash(k.roles.iter().cloned()),
                    k.added_by.clone(),
                    crate::output::age(now, k.added_ms),
                ]
            })?;
        }
        SigningKeyCmd::Revoke { key } => {
            target
                .ask(ClientRequest::RevokeSigningKey { key: key.clone() })
                .await?;
            println!("revoked signing key {key}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
