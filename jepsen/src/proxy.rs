//! A fault-injecting TCP proxy for one directed link (node i → node j, or
//! client → node). The lab puts one in front of every link and flips its
//! faults: `blocked` cuts open connections and refuses new ones (a
//! partition in that direction), `delay` holds every chunk back (latency).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a link currently does to its traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkFaults {
    pub blocked: bool,
    pub delay: Duration,
}

/// One proxied link; stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    faults: watch::Sender<LinkFaults>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (faults, rx) = watch::channel(LinkFaults::default());
        let accept = tokio::spawn(accept_loop(listener, target, rx));
        Ok(Self {
            addr,
            faults,
            accept,
        })
    }

    /// Like [`start`](Self::start), on a port not in `avoid` (a local
    /// cluster's [`planned_ports`]: the OS could hand one of them to a
    /// proxy before its node binds it, and the node then fails to start).
    ///
    /// [`planned_ports`]: streamshield_client::local::LocalCluster::planned_ports
    pub async fn start_avoiding(target: SocketAddr, avoid: &[u16]) -> io::Result<Self> {
        // Colliding proxies stay bound until a good one is found, so that
        // the OS does not hand out the same port again.
        let mut colliding = Vec::new();
        loop {
            let p = Self::start(target).await?;
            if !avoid.contains(&p.addr().port()) {
                return Ok(p);
            }
            colliding.push(p);
        }
    }

    /// Where to connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, faults: LinkFaults) {
        self.faults.send_replace(faults);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Pumps see the sender gone and stop.
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    faults: watch::Receiver<LinkFaults>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        if faults.borrow().blocked {
            drop(inbound);
            continue;
        }
        let faults = faults.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            let up = tokio::spawn(pump(ri, wo, faults.clone()));
            let down = tokio::spawn(pump(ro, wi, faults));
            // Either direction ending ends the connection.
            tokio::select! {
                _ = up => {},
                _ = down => {},
            }
        });
    }
}

/// Copies one direction until EOF, an error, or the link is blocked.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut faults: watch::Receiver<LinkFaults>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            changed = faults.changed() => {
                if changed.is_err() || faults.borrow().blocked {
                    return;
                }
                continue;
            }
        };
        let f = *faults.borrow();
        if f.blocked {
            return;
        }
        if !f.delay.is_zero() {
            tokio::time::sleep(f.delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream) -> io::Result<Vec<u8>> {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn forwards_blocks_and_heals() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut open).await.unwrap(), b"ping");

        proxy.set(LinkFaults {
            blocked: true,
            ..Default::default()
        });
        assert!(
            round_trip(&mut open).await.is_err(),
            "open connection is cut"
        );
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            round_trip(&mut fresh).await.is_err(),
            "new connections get nothing"
        );

        proxy.set(LinkFaults::default());
        let mut healed = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut healed).await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn delays_each_direction() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        proxy.set(LinkFaults {
            blocked: false,
            delay: Duration::from_millis(100),
        });
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        let started = Instant::now();
        assert_eq!(round_trip(&mut s).await.unwrap(), b"ping");
        // Held back once each way.
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }
}
