//! How a user command reaches the cluster: the client config it names (`--config`) and how it
//! reads (`--stale`), turned into a [`wasmos_client::Client`].

use std::path::PathBuf;

use anyhow::Result;
use wasmos_client::{Client, ClientConfig, ConnectOptions};
use wasmos_proto::{ClientRequest, ClientResponse};

/// The cluster a command talks to, from the global flags.
pub(crate) struct Target {
    pub(crate) config: Option<PathBuf>,
    pub(crate) options: ConnectOptions,
}

impl Target {
    /// The client config `--config`, `$WASMOS_CONFIG` or the default dev data dir names.
    pub(crate) fn load(&self) -> Result<ClientConfig> {
        Ok(ClientConfig::load(self.config.as_deref())?)
    }

    /// Connects to the leader of the configured group.
    pub(crate) async fn connect(&self) -> Result<Client> {
        self.connect_to(&self.load()?).await
    }

    /// Connects with `cfg` (the loaded config, perhaps narrowed to one master).
    pub(crate) async fn connect_to(&self, cfg: &ClientConfig) -> Result<Client> {
        Ok(Client::connect_with(cfg, self.options).await?)
    }

    /// One request on a fresh connection: what every read command does.
    pub(crate) async fn ask(&self, req: ClientRequest) -> Result<ClientResponse> {
        let client = self.connect().await?;
        let resp = client.request(req).await;
        client.close().await;
        Ok(resp?)
    }
}
