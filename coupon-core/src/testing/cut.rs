//! A TCP forwarder a test can cut: the network path between a service and one store, on real
//! sockets, without touching the store itself (which other tests share).

use std::net::SocketAddr;

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Forwards every connection made to [`Self::addr`] to a target address until [`Self::cut`]:
/// then every open connection is dropped (reset for both ends) and new ones are closed at
/// once, as when a network path fails. [`Self::restore`] forwards again. Dropping it stops it.
pub struct TcpCut {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpCut {
    /// Listens on a free port of 127.0.0.1 and forwards to `target`.
    ///
    /// # Panics
    /// No port could be bound (a broken test machine).
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding a port");
        let addr = listener.local_addr().expect("a bound address");
        let (open, watch_open) = watch::channel(true);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut open_now = watch_open.clone();
                if !*open_now.borrow() {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut client = client;
                    tokio::select! {
                        _ = copy_bidirectional(&mut client, &mut server) => {}
                        _ = open_now.wait_for(|open| !open) => {
                            // Reset rather than close: a cut path does not say goodbye.
                            let _ = client.set_zero_linger();
                        }
                    }
                });
            }
        });
        Self { addr, open, accept }
    }

    /// Where to connect instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every forwarded connection and refuses new ones.
    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    /// Forwards new connections again.
    pub fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for TcpCut {
    fn drop(&mut self) {
        self.accept.abort();
        self.open.send_replace(false);
    }
}
