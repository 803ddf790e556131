//! A TCP proxy the tests put between a service and a dependency, to take the
//! dependency away without touching it: `set_down(true)` cuts every open
//! connection and refuses new ones; `set_down(false)` lets traffic through again.
//! `set_hung(true)` makes it a dependency that hangs: connections are accepted and
//! held, and nothing is ever answered. It counts the connections open through it
//! (and the most at once, [`Proxy::peak_connections`]).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// A running proxy; stops when dropped.
pub struct Proxy {
    pub port: u16,
    down: Arc<AtomicBool>,
    hung: Arc<AtomicBool>,
    counts: Arc<Counts>,
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = Arc::new(AtomicBool::new(false));
        let hung = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let (cut, _) = watch::channel(0u64);
        let task = {
            let (down, hung, counts) = (down.clone(), hung.clone(), counts.clone());
            let cut = cut.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    if down.load(Ordering::SeqCst) {
                        drop(client); // refused: closed at once
                        continue;
                    }
                    let mut cut_rx = cut.subscribe();
                    let hang = hung.load(Ordering::SeqCst);
                    let open = Open::new(counts.clone());
                    tokio::spawn(async move {
                        let _open = open;
                        if hang {
                            // Held, never answered, until the client gives up or a cut.
                            let mut client = client;
                            let mut sink = tokio::io::sink();
                            tokio::select! {
                                _ = tokio::io::copy(&mut client, &mut sink) => {}
                                _ = cut_rx.changed() => {}
                            }
                            return;
                        }
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let (mut client, mut server) = (client, server);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut_rx.changed() => {}
                        }
                    });
                }
            })
        };
        Self {
            port,
            down,
            hung,
            counts,
            cut,
            task,
        }
    }

    /// Takes the dependency away (cutting live connections) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

impl Proxy {
    /// Makes the dependency hang (new connections are accepted and never answered) or
    /// forwards again. Going back to forwarding cuts the hung connections.
    pub fn set_hung(&self, hung: bool) {
        let was = self.hung.swap(hung, Ordering::SeqCst);
        if was && !hung {
            self.cut.send_modify(|n| *n += 1);
        }
    }

    /// Connections open through the proxy now.
    pub fn open_connections(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }

    /// The most connections that were open through the proxy at once.
    pub fn peak_connections(&self) -> usize {
        self.counts.peak.load(Ordering::SeqCst)
    }
}

#[derive(Default)]
struct Counts {
    open: AtomicUsize,
    peak: AtomicUsize,
}

/// One connection counted open until dropped.
struct Open(Arc<Counts>);

impl Open {
    fn new(counts: Arc<Counts>) -> Self {
        let now = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
        counts.peak.fetch_max(now, Ordering::SeqCst);
        Self(counts)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
