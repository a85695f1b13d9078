//! Revocations taking effect on this master: the list its verifiers consult (QUIC and HTTPS)
//! follows the replicated one, and the live connections of a certificate it newly covers are
//! closed as soon as the change is applied here, on every master, leader or not.

use wasmos_net::Revoked;
use wasmos_proto::MasterToAgent;
use wasmos_state::ClusterState;

/// The replicated revocations, as the verifiers read them.
pub(crate) fn revoked_of(s: &ClusterState) -> Revoked {
    Revoked {
        serials: s.revoked_serials.keys().cloned().collect(),
        identities: s.revoked_identities.keys().cloned().collect(),
    }
}

/// Keeps `list` equal to the replicated revocations and closes what each change covers, here
/// and (through their sessions) on the agents. Revocations are only ever added, so their count
/// tells a change, and an agent is told only what is new.
pub(crate) async fn follow(shared: std::sync::Arc<crate::Shared>) {
    let mut applied = shared.raft.subscribe();
    let mut seen = None;
    loop {
        let count = shared
            .raft
            .read(|s| s.revoked_serials.len() + s.revoked_identities.len());
        if seen != Some(count) {
            seen = Some(count);
            let before = shared.revocations.current();
            shared.revocations.set(shared.raft.read(revoked_of));
            let after = shared.revocations.current();
            let closed = shared.live.close_revoked(&shared.revocations);
            if closed > 0 {
                tracing::info!(closed, "closed connections of revoked certificates");
            }
            let added = Revoked {
                serials: after.serials.difference(&before.serials).cloned().collect(),
                identities: after
                    .identities
                    .difference(&before.identities)
                    .cloned()
                    .collect(),
            };
            if !added.is_empty() {
                let msgs = to_agents(&added, false);
                let links: Vec<_> = shared.agents().values().map(|l| l.tx.clone()).collect();
                for tx in links {
                    for msg in &msgs {
                        let _ = tx.send(msg.clone());
                    }
                }
            }
        }
        if applied.changed().await.is_err() {
            return;
        }
    }
}

/// How many revocations one message to an agent carries: a full list (identities of up to 256
/// bytes) would not fit in one frame.
const PER_MESSAGE: usize = 10_000;

/// `revoked` as messages to an agent. The whole list (`whole`) ends with a `complete` message
/// (there is at least one, so an agent learns that the masters' list is empty); additions do
/// not, as an agent must not take them for the whole list.
pub(crate) fn to_agents(revoked: &Revoked, whole: bool) -> Vec<MasterToAgent> {
    let serials: Vec<String> = revoked.serials.iter().cloned().collect();
    let identities: Vec<String> = revoked.identities.iter().cloned().collect();
    let mut msgs: Vec<MasterToAgent> = serials
        .chunks(PER_MESSAGE)
        .map(|c| MasterToAgent::Revoked {
            serials: c.to_vec(),
            identities: Vec::new(),
            complete: false,
        })
        .chain(
            identities
                .chunks(PER_MESSAGE)
                .map(|c| MasterToAgent::Revoked {
                    serials: Vec::new(),
                    identities: c.to_vec(),
                    complete: false,
                }),
        )
        .collect();
    match msgs.last_mut() {
        _ if !whole => {}
        Some(MasterToAgent::Revoked { complete, .. }) => *complete = true,
        _ => msgs.push(MasterToAgent::Revoked {
            serials: Vec::new(),
            identities: Vec::new(),
            complete: true,
        }),
    }
    msgs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_list_reaches_agents_in_frames_that_fit() {
        let revoked = Revoked {
            serials: (0..25_000).map(|i| format!("{i:040x}")).collect(),
            identities: (0..3).map(|i| format!("wasmos://tenant/t/u{i}")).collect(),
        };
        let msgs = to_agents(&revoked, true);
        assert_eq!(msgs.len(), 4);
        let mut got = Revoked::default();
        for (i, m) in msgs.iter().enumerate() {
            let bytes = wasmos_proto::encode(m).map_err(|e| e.to_string());
            assert!(bytes.is_ok(), "{bytes:?}");
            let MasterToAgent::Revoked {
                serials,
                identities,
                complete,
            } = m
            else {
                panic!("{m:?}");
            };
            assert_eq!(*complete, i == msgs.len() - 1);
            got.serials.extend(serials.iter().cloned());
            got.identities.extend(identities.iter().cloned());
        }
        assert_eq!(got, revoked);
        assert!(matches!(
            to_agents(&Revoked::default(), true).as_slice(),
            [MasterToAgent::Revoked { complete: true, .. }]
        ));
        // Additions never say they are the whole list.
        assert!(to_agents(&revoked, false).iter().all(|m| matches!(
            m,
            MasterToAgent::Revoked {
                complete: false,
                ..
            }
        )));
    }
}
