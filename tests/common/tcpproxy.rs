//! A cuttable loopback TCP proxy on std threads: put one in front of a
//! server and `cut()` it to simulate a network partition (the connections
//! stay open, bytes go nowhere, nothing comes back: no RST, no FIN), then
//! `restore()` it. With several upstreams (`start_any`) each connection
//! goes to the first that accepts: what a Service or load balancer in front
//! of Vault's HA nodes does once a dead node's endpoint is gone.
//!
//! Every connection has two pump threads (client→upstream and back) that
//! poll with short read timeouts, so `Drop` can stop and join everything:
//! no thread and no listening port outlives the proxy.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often blocked threads look at the stop / cut flags.
const POLL: Duration = Duration::from_millis(20);

struct Conn {
    id: u64,
    /// The `epoch` the connection was accepted in; a `cut()` bumps the
    /// epoch and every older connection stops forwarding for good.
    epoch: u64,
    client: TcpStream,
    upstream: Option<TcpStream>,
}

struct Shared {
    upstreams: Vec<SocketAddr>,
    stop: AtomicBool,
    cut: AtomicBool,
    epoch: AtomicU64,
    next_id: AtomicU64,
    conns: Mutex<Vec<Conn>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    /// True while a connection of `epoch` may still forward bytes.
    fn live(&self, epoch: u64) -> bool {
        !self.stop.load(Ordering::SeqCst)
            && !self.cut.load(Ordering::SeqCst)
            && self.epoch.load(Ordering::SeqCst) == epoch
    }

    fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) {
        let h = std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .expect("tcpproxy thread");
        let mut threads = self.threads.lock().unwrap();
        // Forget the handles of threads that are done (already joined in
        // effect), so a long test does not accumulate them.
        let (done, running): (Vec<_>, Vec<_>) = threads.drain(..).partition(|t| t.is_finished());
        for t in done {
            let _ = t.join();
        }
        *threads = running;
        threads.push(h);
    }
}

pub struct TcpProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl TcpProxy {
    /// Listens on 127.0.0.1:<free port> and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> TcpProxy {
        Self::start_any(vec![upstream])
    }

    /// Forwards each connection to the first of `upstreams` that accepts.
    pub fn start_any(upstreams: Vec<SocketAddr>) -> TcpProxy {
        Self::start_at(([127, 0, 0, 1], 0).into(), upstreams)
    }

    /// As [`TcpProxy::start_any`], listening on `listen` (a port a client
    /// was given before anything listened there: it was refused until now).
    pub fn start_at(listen: SocketAddr, upstreams: Vec<SocketAddr>) -> TcpProxy {
        let listener = TcpListener::bind(listen).expect("tcpproxy bind");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstreams,
            stop: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("tcpproxy-accept-{}", addr.port()))
            .spawn(move || accept_loop(listener, s))
            .expect("tcpproxy accept thread");
        TcpProxy {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// One proxy in front of each of `endpoints` (`https://127.0.0.1:PORT`),
    /// in order: a process given their [`TcpProxy::https_endpoint`]s can be
    /// cut off from etcd by the test.
    pub fn in_front_of(endpoints: &[String]) -> Vec<TcpProxy> {
        endpoints
            .iter()
            .map(|e| {
                let port: u16 = e.rsplit(':').next().unwrap().parse().unwrap();
                TcpProxy::start(([127, 0, 0, 1], port).into())
            })
            .collect()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:<port>` (etcd and OpenBao speak TLS; the harness
    /// certificates carry the IP SAN 127.0.0.1).
    pub fn https_endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port())
    }

    /// Partition: the upstream side of every live connection is closed,
    /// client sides stay open but get nothing; new connections are
    /// accepted and black-holed too.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        let mut conns = self.shared.conns.lock().unwrap();
        for c in conns.iter_mut() {
            if let Some(u) = c.upstream.take() {
                let _ = u.shutdown(Shutdown::Both);
            }
        }
    }

    /// Forwards again, for connections accepted from now on. The
    /// black-holed connections are closed (the client sees EOF and
    /// reconnects, through the proxy, which forwards again).
    pub fn restore(&self) {
        let mut conns = self.shared.conns.lock().unwrap();
        let epoch = self.shared.epoch.fetch_add(1, Ordering::SeqCst) + 1;
        for c in conns.iter() {
            let _ = c.client.shutdown(Shutdown::Both);
            if let Some(u) = &c.upstream {
                let _ = u.shutdown(Shutdown::Both);
            }
        }
        conns.retain(|c| c.epoch == epoch);
        self.shared.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for c in self.shared.conns.lock().unwrap().drain(..) {
            let _ = c.client.shutdown(Shutdown::Both);
            if let Some(u) = c.upstream {
                let _ = u.shutdown(Shutdown::Both);
            }
        }
        loop {
            let batch: Vec<_> = self.shared.threads.lock().unwrap().drain(..).collect();
            if batch.is_empty() {
                break;
            }
            for t in batch {
                let _ = t.join();
            }
        }
    }
}

fn accept_loop(listener: TcpListener, s: Arc<Shared>) {
    while !s.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                let epoch = s.epoch.load(Ordering::SeqCst);
                if s.cut.load(Ordering::SeqCst) {
                    // Black hole: held open, never read, never answered.
                    s.conns.lock().unwrap().push(Conn {
                        id: s.next_id.fetch_add(1, Ordering::SeqCst),
                        epoch,
                        client,
                        upstream: None,
                    });
                    continue;
                }
                let s2 = s.clone();
                s.spawn("tcpproxy-conn", move || connect_and_pump(client, epoch, s2));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn connect_and_pump(client: TcpStream, epoch: u64, s: Arc<Shared>) {
    let upstream = s
        .upstreams
        .iter()
        .find_map(|u| TcpStream::connect_timeout(u, Duration::from_secs(2)).ok());
    let Some(upstream) = upstream else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = upstream.set_nodelay(true);
    let (Ok(c2), Ok(u2), Ok(c3), Ok(u3)) = (
        client.try_clone(),
        upstream.try_clone(),
        client.try_clone(),
        upstream.try_clone(),
    ) else {
        return;
    };
    let id = s.next_id.fetch_add(1, Ordering::SeqCst);
    {
        let mut conns = s.conns.lock().unwrap();
        // A cut while we were connecting: black-hole this one too.
        if !s.live(epoch) {
            let _ = upstream.shutdown(Shutdown::Both);
            conns.push(Conn {
                id,
                epoch,
                client,
                upstream: None,
            });
            return;
        }
        conns.push(Conn {
            id,
            epoch,
            client,
            upstream: Some(upstream),
        });
    }
    let done = Arc::new(AtomicU64::new(0));
    let (s2, done2) = (s.clone(), done.clone());
    s.spawn("tcpproxy-up", move || {
        pump(c2, u2, epoch, &s2);
        finish(id, epoch, &done2, &s2);
    });
    pump(u3, c3, epoch, &s);
    finish(id, epoch, &done, &s);
}

/// The second pump of a connection to end forgets it (closing its
/// sockets), unless the connection was cut: then the client side stays
/// open until `restore()` or `Drop`.
fn finish(id: u64, epoch: u64, done: &AtomicU64, s: &Shared) {
    if done.fetch_add(1, Ordering::SeqCst) == 1 && s.live(epoch) {
        s.conns.lock().unwrap().retain(|c| c.id != id);
    }
}

/// Copies `from` → `to` while the connection is live. On a clean EOF the
/// write side of `to` is shut; when the connection was cut, `to` (or
/// `from`) is the client and is left open: a partition, not a close.
fn pump(mut from: TcpStream, mut to: TcpStream, epoch: u64, s: &Shared) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buf = [0u8; 16 * 1024];
    loop {
        if !s.live(epoch) {
            return;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                if s.live(epoch) {
                    let _ = to.shutdown(Shutdown::Write);
                }
                return;
            }
            Ok(n) => {
                if !s.live(epoch) {
                    return;
                }
                if to.write_all(&buf[..n]).is_err() {
                    if s.live(epoch) {
                        let _ = from.shutdown(Shutdown::Both);
                    }
                    return;
                }
            }
            Err(e)
                if e.kind() == ErrorKind::WouldBlock
                    || e.kind() == ErrorKind::TimedOut
                    || e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                if s.live(epoch) {
                    let _ = to.shutdown(Shutdown::Both);
                }
                return;
            }
        }
    }
}

// ---- self-test (registered in tests/suite/telegram_failover.rs) ----------

/// Echo server on a std thread; proxy forwards; after `cut()` nothing comes
/// back (no EOF either); after `restore()` a new connection forwards again.
pub fn self_test() {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    echo.set_nonblocking(true).unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let server = std::thread::spawn(move || {
        let mut workers = Vec::new();
        while !stop2.load(Ordering::SeqCst) {
            match echo.accept() {
                Ok((mut c, _)) => {
                    let stop3 = stop2.clone();
                    workers.push(std::thread::spawn(move || {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(POLL)).unwrap();
                        let mut b = [0u8; 1024];
                        while !stop3.load(Ordering::SeqCst) {
                            match c.read(&mut b) {
                                Ok(0) => return,
                                Ok(n) => {
                                    if c.write_all(&b[..n]).is_err() {
                                        return;
                                    }
                                }
                                Err(e)
                                    if e.kind() == ErrorKind::WouldBlock
                                        || e.kind() == ErrorKind::TimedOut => {}
                                Err(_) => return,
                            }
                        }
                    }));
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
        for w in workers {
            let _ = w.join();
        }
    });

    let proxy = TcpProxy::start(echo_addr);
    let roundtrip = |c: &mut TcpStream, msg: &[u8]| -> Result<Vec<u8>, std::io::Error> {
        c.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got)?;
        Ok(got)
    };
    let connect = || {
        let c = TcpStream::connect(proxy.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        c
    };

    // Forwards.
    let mut a = connect();
    assert_eq!(roundtrip(&mut a, b"hello").unwrap(), b"hello");

    // Cut: the live connection gets nothing back, and no EOF either.
    proxy.cut();
    let _ = a.write_all(b"lost");
    let mut b = [0u8; 16];
    match a.read(&mut b) {
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
        other => panic!("cut connection answered: {other:?}"),
    }
    // A new connection is accepted (no refusal) but black-holed.
    let mut n = connect();
    n.write_all(b"void").unwrap();
    match n.read(&mut b) {
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
        other => panic!("connection during cut answered: {other:?}"),
    }

    // Restore: a new connection forwards again.
    proxy.restore();
    let mut r = connect();
    assert_eq!(roundtrip(&mut r, b"again").unwrap(), b"again");
    drop((a, n, r));

    // Drop stops the listener.
    let port = proxy.port();
    drop(proxy);
    // The kernel may hand the freed port to a listener another test binds
    // meanwhile: what must be gone is *our* forwarding to the echo server.
    if let Ok(mut c) =
        TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), POLL * 10)
    {
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let echoed = roundtrip(&mut c, b"ping").is_ok_and(|got| got == b"ping");
        assert!(!echoed, "proxy port {port} still forwards after drop");
    }
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
}
