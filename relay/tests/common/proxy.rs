//! A TCP proxy in front of the cluster that can black-hole its connections: it stops forwarding
//! in both directions and holds the sockets open, sending neither FIN nor RST. That is what a lost
//! NAT or load-balancer entry, or a failover, looks like to both ends: silence.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Which connections forward: those accepted in the current generation, while it lasts.
#[derive(Clone, Copy)]
struct Path {
    generation: u64,
    open: bool,
}

pub struct Proxy {
    pub addr: SocketAddr,
    path: watch::Sender<Path>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (path, _) = watch::channel(Path { generation: 0, open: true });
        let paths = path.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(forward(client, upstream, paths.subscribe()));
            }
        });
        Proxy { addr, path, accept }
    }

    /// Every connection, current or new, stops forwarding and stays open: dead for good.
    pub fn black_hole(&self) {
        self.path.send_modify(|p| *p = Path { generation: p.generation + 1, open: false });
    }

    /// New connections forward again; the black-holed ones stay silent, as after a lost NAT entry.
    pub fn restore(&self) {
        self.path.send_modify(|p| p.open = true);
    }
}

impl Drop for Proxy {
    /// Ends the accept loop; dropping the sender ends every connection (closing its sockets).
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, mut path: watch::Receiver<Path>) {
    let born = path.borrow().generation;
    let forwards = move |p: &Path| p.open && p.generation == born;
    if !forwards(&path.borrow()) {
        return hold_silently(&mut path, client).await;
    }
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let silenced = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        Ok(_) = path.wait_for(|p| !forwards(p)) => true,
    };
    if silenced {
        hold_silently(&mut path, (client, server)).await;
    }
}

/// Keeps `sockets` open without reading or writing until the proxy is dropped.
async fn hold_silently<T>(path: &mut watch::Receiver<Path>, sockets: T) {
    while path.changed().await.is_ok() {}
    drop(sockets);
}
