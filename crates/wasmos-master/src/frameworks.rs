//! Framework sessions on `wasmos-framework/1`: subscription (a new framework is recorded
//! through Raft; a returning one must be the same identity), then calls in and events out on
//! one stream. The offer cycle does the work; this module only carries messages.

use std::sync::Arc;

use tokio::sync::mpsc;
use wasmos_net::{Connection, Identity, recv_frame, send_frame};
use wasmos_proto::{FrameworkCall, FrameworkEvent, FrameworkId};
use wasmos_state::{Command, CommandResult};

use crate::client::resolve_role;
use crate::offers::Event;
use crate::{Shared, now_ms};

pub(crate) async fn serve(shared: Arc<Shared>, conn: Connection, who: Identity) {
    let (mut send, mut recv) = match conn.accept_bi().await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("framework left before subscribing: {e}");
            return;
        }
    };
    let refuse = |message: String| FrameworkEvent::Error {
        request: None,
        message,
    };
    let (name, role, revocable, framework) = match recv_frame(&mut recv).await {
        Ok(Some(FrameworkCall::Subscribe {
            name,
            role,
            revocable,
            framework,
        })) => (name, role, revocable, framework),
        other => {
            let msg = format!("expected Subscribe as the first call, got {other:?}");
            refuse_and_close(send, refuse(msg)).await;
            return;
        }
    };
    // Only the leader offers: anywhere else the framework would wait for nothing.
    if let Err(wasmos_raft::RaftError::NotLeader { .. }) = shared.raft.leader_applied().await {
        let (_, addr) = shared.raft.leader_addr();
        refuse_and_close(send, FrameworkEvent::NotLeader { addr }).await;
        return;
    }
    let owner = who.to_uri();
    let subscribed = match subscribe(&shared, &who, &owner, name, role, revocable, framework).await
    {
        Ok(s) => s,
        Err(msg) => {
            tracing::warn!(%owner, "framework refused: {msg}");
            refuse_and_close(send, refuse(msg)).await;
            return;
        }
    };
    let (id, role) = subscribed;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let hello = FrameworkEvent::Subscribed {
        framework: id,
        role: role.clone(),
    };
    if send_frame(&mut send, &hello).await.is_err() {
        return;
    }
    let conn_id = conn.stable_id();
    shared.offer_event(Event::FrameworkUp {
        id,
        conn: conn_id,
        tx,
    });
    tracing::info!(framework = %id, %role, %owner, "framework subscribed");
    let writer = tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if send_frame(&mut send, &ev).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
    });
    loop {
        match recv_frame::<FrameworkCall>(&mut recv).await {
            Ok(Some(FrameworkCall::Subscribe { .. })) => {
                tracing::warn!(framework = %id, "framework subscribed twice on one stream");
            }
            Ok(Some(call)) => shared.offer_event(Event::FrameworkCall { id, call }),
            Ok(None) => break,
            Err(_) if wasmos_net::closed_on_purpose(&conn) => break,
            Err(e) => {
                tracing::warn!(framework = %id, "framework stream failed: {e}");
                break;
            }
        }
    }
    writer.abort();
    shared.offer_event(Event::FrameworkDown { id, conn: conn_id });
    tracing::info!(framework = %id, "framework disconnected");
}

/// Sends the refusal and waits (briefly) until the framework has read it: the connection
/// closes when this session ends, which would otherwise race the message.
async fn refuse_and_close(mut send: wasmos_net::SendStream, ev: FrameworkEvent) {
    let _ = send_frame(&mut send, &ev).await;
    let _ = send.finish();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), send.stopped()).await;
}

/// Registers a new framework, or checks that a returning one is the caller's.
async fn subscribe(
    shared: &Shared,
    who: &Identity,
    owner: &str,
    name: String,
    role: Option<String>,
    revocable: bool,
    framework: Option<FrameworkId>,
) -> Result<(FrameworkId, String), String> {
    if let Some(id) = framework {
        let known = shared.read(|s| s.frameworks.get(&id).cloned());
        return match known {
            Some(f) if f.owner == owner => Ok((id, f.role.to_string())),
            _ => Err(format!("framework {id} is not one of yours")),
        };
    }
    if name.is_empty() || name.len() > 100 {
        return Err("a framework name must be 1 to 100 bytes".into());
    }
    let role = resolve_role(who, role.as_deref())?;
    let result = shared
        .write(Command::RegisterFramework {
            name,
            role: role.clone(),
            owner: owner.to_string(),
            revocable,
            now_ms: now_ms(),
        })
        .await
        .map_err(|e| format!("cannot record the framework: {e}"))?;
    match result {
        CommandResult::Framework(id) => Ok((id, role.to_string())),
        other => Err(format!("cannot record the framework: {other:?}")),
    }
}
