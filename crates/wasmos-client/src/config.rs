//! Where a client finds its cluster: `client.toml` (master address, CA, client certificate and
//! key), looked up from `--config`, then `WASMOS_CONFIG`, then the default dev data dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wasmos_net::Credentials;

use crate::error::ClientError;

type Result<T> = std::result::Result<T, ClientError>;

pub const CONFIG_FILE: &str = "client.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The master's QUIC address.
    pub master: SocketAddr,
    /// The other masters of a multi-master group: the CLI asks whichever answers who leads,
    /// and talks to the leader.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masters: Vec<SocketAddr>,
    /// The master's HTTPS/JSON API (`wasmos master --http-listen`), for frameworks in other
    /// languages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    /// Paths are relative to the config file's directory unless absolute.
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(skip)]
    pub dir: PathBuf,
}

/// The per-user directory `wasmos dev` uses when not given `--data-dir`: under
/// `$XDG_DATA_HOME` (`~/.local/share`) on Linux, `~/Library/Application Support` on macOS and
/// `%LOCALAPPDATA%` on Windows, where state that does not roam with the user belongs.
pub fn default_data_dir() -> Result<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "wasmos").ok_or_else(|| {
        ClientError::Config(
            "cannot find a home directory for the default data dir; pass --data-dir".to_string(),
        )
    })?;
    Ok(dirs.data_local_dir().join("dev"))
}

/// The client config to use: `explicit` (`--config`), else `$WASMOS_CONFIG`, else the one in
/// the default dev data dir.
pub fn resolve_path(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("WASMOS_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    Ok(default_data_dir()?.join(CONFIG_FILE))
}

impl ClientConfig {
    /// The operator's config `wasmos dev` writes into its data dir `dir`, naming the
    /// certificates under `dir/pki` by relative paths. They are written with `/`, which Windows
    /// reads as well, so the file works from either OS (a data dir shared with a Wine or WSL
    /// process, say).
    pub fn dev_operator(
        dir: PathBuf,
        master: SocketAddr,
        masters: Vec<SocketAddr>,
        http: Option<SocketAddr>,
    ) -> ClientConfig {
        ClientConfig {
            master,
            masters,
            http,
            ca: PathBuf::from("pki/ca.pem"),
            cert: PathBuf::from("pki/operator.pem"),
            key: PathBuf::from("pki/operator.key"),
            dir,
        }
    }

    /// Reads the config [`resolve_path`] finds; paths in it are taken relative to its directory.
    pub fn load(explicit: Option<&Path>) -> Result<ClientConfig> {
        let path = resolve_path(explicit)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClientError::Config(format!(
                    "no client config at {} (start a cluster with `wasmos dev`, or pass --config FILE / set WASMOS_CONFIG)",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(ClientError::Config(format!(
                    "cannot read client config {}: {e}",
                    path.display()
                )));
            }
        };
        let mut cfg: ClientConfig = toml::from_str(&text).map_err(|e| {
            ClientError::Config(format!(
                "client config {} is invalid: {}",
                path.display(),
                e.message()
            ))
        })?;
        cfg.dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(cfg)
    }

    /// The CA, certificate and key the config names, read and checked.
    pub fn credentials(&self) -> Result<Credentials> {
        let read = |p: &PathBuf| {
            let full = self.dir.join(p);
            std::fs::read_to_string(&full)
                .map_err(|e| ClientError::Config(format!("cannot read {}: {e}", full.display())))
        };
        Credentials::from_pem(&read(&self.ca)?, &read(&self.cert)?, &read(&self.key)?)
            .map_err(|e| ClientError::Config(format!("client config credentials: {e}")))
    }

    /// Writes the config atomically, so a reader never sees half a file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let body = toml::to_string(self)
            .map_err(|e| ClientError::Config(format!("serializing client config: {e}")))?;
        let text =
            format!("# Written by `wasmos dev`: how the wasmos CLI reaches this cluster.\n{body}");
        let cannot = |p: &Path, e: std::io::Error| {
            ClientError::Config(format!("cannot write {}: {e}", p.display()))
        };
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(|e| cannot(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| cannot(path, e))?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_malformed_configs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let err = ClientConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("no client config at"), "{err}");
        std::fs::write(&path, "master = 12").unwrap();
        let err = ClientConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("is invalid"), "{err}");
    }

    #[test]
    fn round_trips_with_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONFIG_FILE);
        let cfg = ClientConfig {
            http: None,
            master: "127.0.0.1:7433".parse().unwrap(),
            masters: Vec::new(),
            ca: "pki/ca.pem".into(),
            cert: "pki/operator.pem".into(),
            key: "pki/operator.key".into(),
            dir: PathBuf::new(),
        };
        cfg.write(&path).unwrap();
        let back = ClientConfig::load(Some(&path)).unwrap();
        assert_eq!(back.master, cfg.master);
        assert_eq!(back.dir, dir.path());
    }
}
