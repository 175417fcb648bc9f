//! A TCP proxy in front of PostgreSQL that a test can cut and restore: the honest way to make
//! the database unreachable for one baton instance while the test keeps its own connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A proxy on `127.0.0.1:<random port>` forwarding to an upstream address.
pub(crate) struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    cut: AtomicBool,
    /// Cancelled on cut: ends every forwarded connection of the current generation.
    generation: Mutex<CancellationToken>,
    /// Connections refused while cut.
    refused: AtomicU64,
}

impl Proxy {
    /// Listens on a random local port and forwards every connection to `upstream`.
    pub(crate) async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the proxy");
        let port = listener.local_addr().expect("the proxy's address").port();
        let shared = Arc::new(Shared {
            cut: AtomicBool::new(false),
            generation: Mutex::new(CancellationToken::new()),
            refused: AtomicU64::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        Proxy {
            port,
            shared,
            accept,
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Drops every open connection and refuses new ones (accepted, then closed at once).
    pub(crate) fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        let mut generation = self.shared.generation.lock().expect("proxy lock");
        generation.cancel();
        *generation = CancellationToken::new();
    }

    /// Forwards new connections again.
    pub(crate) fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// How many connections were refused while cut.
    pub(crate) fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.generation.lock().expect("proxy lock").cancel();
    }
}

async fn accept_loop(listener: TcpListener, upstream: String, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if shared.cut.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            refuse(client);
            continue;
        }
        let token = shared.generation.lock().expect("proxy lock").clone();
        let upstream = upstream.clone();
        tokio::spawn(forward(client, upstream, token));
    }
}

/// Closes a connection with a reset, as a dead server would.
fn refuse(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}

async fn forward(mut client: TcpStream, upstream: String, cut: CancellationToken) {
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        refuse(client);
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = cut.cancelled() => refuse(client),
    }
}
