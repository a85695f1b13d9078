//! Binding QUIC endpoints: quinn's own socket (ECN, packet info, segmentation offload) where
//! the network stack accepts its options, a plain UDP socket where it refuses them.
//!
//! quinn-udp sets `IP_RECVECN`/`IPV6_RECVECN` and reads `IPV6_V6ONLY` on every socket and
//! gives up when the stack says no. Windows does not, but other stacks that run Windows
//! programs do (Wine refuses both), and an agent that cannot bind is worth far less than one
//! without ECN. The plain socket sends one datagram per call and reports no ECN marks, which
//! QUIC treats as a path without ECN: correct, only less efficient under congestion.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};

/// Set to `1` to use the plain socket even where quinn's would work: for network stacks that
/// accept the options but mishandle them, and so tests exercise this path on every OS.
pub const PLAIN_UDP_ENV: &str = "WASMOS_PLAIN_UDP";

/// A QUIC endpoint bound at `addr`, serving `server` when given.
pub fn bind_endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> io::Result<quinn::Endpoint> {
    let forced = std::env::var(PLAIN_UDP_ENV).is_ok_and(|v| v == "1");
    bind_endpoint_with(addr, server, forced)
}

fn bind_endpoint_with(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    plain: bool,
) -> io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    let runtime = Arc::new(TokioRuntime);
    let wrapped: Arc<dyn AsyncUdpSocket> = if plain {
        Arc::new(PlainUdp::new(socket)?)
    } else {
        // quinn's wrapper takes the socket; a failed attempt must leave one to fall back on.
        match runtime.wrap_udp_socket(socket.try_clone()?) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    %addr,
                    "the network stack refused quinn's UDP options ({e}); using a plain UDP \
                     socket without ECN"
                );
                Arc::new(PlainUdp::new(socket)?)
            }
        }
    };
    quinn::Endpoint::new_with_abstract_socket(
        quinn::EndpointConfig::default(),
        server,
        wrapped,
        runtime,
    )
}

/// One datagram per send and receive, no control messages.
struct PlainUdp {
    io: tokio::net::UdpSocket,
}

impl PlainUdp {
    fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self {
            io: tokio::net::UdpSocket::from_std(socket)?,
        })
    }
}

impl fmt::Debug for PlainUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainUdp")
            .field("local", &self.io.local_addr().ok())
            .finish()
    }
}

impl AsyncUdpSocket for PlainUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable(self))
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        // max_transmit_segments is 1, so quinn hands over one datagram at a time. Only
        // "not now" goes back to quinn: any other error would end the connection's driver,
        // while a datagram that cannot be sent (no route, a firewall) is one QUIC already
        // treats as lost. quinn-udp's own socket does the same.
        match self.io.try_send_to(transmit.contents, transmit.destination) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            Err(e) => {
                tracing::debug!(to = %transmit.destination, "UDP send failed: {e}");
                Ok(())
            }
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) else {
            return Poll::Ready(Ok(0));
        };
        // Bounded, so a socket that fails every call does not spin here for ever.
        let mut errors = 0;
        loop {
            ready!(self.io.poll_recv_ready(cx))?;
            match self.io.try_recv_from(buf) {
                Ok((len, addr)) => {
                    *slot = RecvMeta {
                        addr,
                        len,
                        stride: len,
                        ecn: None,
                        dst_ip: None,
                    };
                    return Poll::Ready(Ok(1));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                // An error from one datagram (an ICMP unreachable reported on the socket,
                // WSAENETRESET): skip it, as quinn does ConnectionReset; returned, it would end
                // the endpoint's driver and every connection on it.
                Err(e) => {
                    tracing::debug!("UDP receive failed: {e}");
                    errors += 1;
                    if errors >= 64 {
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }
}

#[derive(Debug)]
struct Writable(Arc<PlainUdp>);

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        self.0.io.poll_send_ready(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends on plain sockets: a whole QUIC handshake and a stream round trip, with mutual
    /// TLS, over the path Wine and other refusing stacks take.
    #[tokio::test]
    async fn quic_works_over_plain_sockets() -> anyhow::Result<()> {
        use crate::{Identity, pki};
        let ca = pki::new_ca("test")?;
        let creds = |who: Identity| pki::issue_credentials(&ca, &who);
        let server_creds = creds(Identity::Master("m1".into()))?;
        let client_creds = creds(Identity::Operator("ops".into()))?;
        let server = crate::tls::server_config(&server_creds, &[b"t"])?;
        let listener = bind_endpoint_with("127.0.0.1:0".parse()?, Some(server), true)?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            let conn = listener.accept().await?.await.ok()?;
            let (mut send, mut recv) = conn.accept_bi().await.ok()?;
            let got = recv.read_to_end(1024).await.ok()?;
            send.write_all(&got).await.ok()?;
            send.finish().ok()?;
            conn.closed().await;
            Some(got)
        });
        let mut client = bind_endpoint_with(crate::tls::bind_for(addr), None, true)?;
        client.set_default_client_config(crate::tls::client_config(
            &client_creds,
            b"t",
            std::time::Duration::from_secs(1),
        )?);
        let conn = client.connect(addr, crate::MASTER_SERVER_NAME)?.await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(b"over plain udp").await?;
        send.finish()?;
        let echoed = recv.read_to_end(1024).await?;
        assert_eq!(echoed, b"over plain udp");
        conn.close(0u32.into(), b"done");
        assert_eq!(accept.await?.as_deref(), Some(b"over plain udp".as_slice()));
        Ok(())
    }
}
