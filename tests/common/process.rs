//! Child processes of the harness: every one is killed when its handle is
//! dropped, and again by the kernel (PR_SET_PDEATHSIG) if the test process
//! dies without unwinding.
//!
//! PDEATHSIG fires when the *thread* that forked the child exits, so all
//! children are forked by one keeper thread that lives as long as the
//! process; tests may start and stop members from any thread.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, Sender<std::io::Result<Child>>);

fn keeper() -> &'static Mutex<Sender<SpawnRequest>> {
    static KEEPER: OnceLock<Mutex<Sender<SpawnRequest>>> = OnceLock::new();
    KEEPER.get_or_init(|| {
        let (tx, rx) = channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("process-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The channel lives in a static, so this loop never ends
                // while the process runs: the children keep their parent.
            })
            .expect("keeper thread");
        Mutex::new(tx)
    })
}

/// Every pid the harness started, for the end-of-run leftover check.
pub fn started_pids() -> &'static Mutex<Vec<(u32, String)>> {
    static PIDS: OnceLock<Mutex<Vec<(u32, String)>>> = OnceLock::new();
    PIDS.get_or_init(|| Mutex::new(Vec::new()))
}

/// A running child with its log file.
pub struct Proc {
    pub log: PathBuf,
    child: Option<Child>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Proc {
        use std::os::unix::process::CommandExt;
        let out = File::options().create(true).append(true).open(log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        unsafe {
            cmd.pre_exec(|| {
                // Kill the child if the harness dies without cleaning up.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (tx, rx) = channel();
        keeper().lock().unwrap().send((cmd, tx)).unwrap();
        let child = rx
            .recv()
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        started_pids()
            .lock()
            .unwrap()
            .push((child.id(), name.to_string()));
        Proc {
            log: log.to_path_buf(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Waits up to `limit` for the child to exit by itself.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let c = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Whether the child has exited (it is reaped then).
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => {
                self.child = None;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; reaped either way.
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The log so far (for assertions and failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Processes (other than ourselves) whose command line or working
/// directory mentions `needle`: what the leftover check looks for.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cwd = std::fs::read_link(entry.path().join("cwd"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // Zombies have an empty cmdline; they hold no port and no file.
        if cmdline.contains(needle) || (!cmdline.is_empty() && cwd.contains(needle)) {
            found.push((pid, cmdline.trim().to_string()));
        }
    }
    found
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_open(port: u16) -> bool {
    // A listening socket, read from the kernel's tables: a connect() probe
    // to a port in the ephemeral range can "succeed" against itself (TCP
    // simultaneous open when the kernel picks that very port as the source)
    // and report a listener where there is none.
    let hex = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                // local_address is column 1 ("0100007F:85F6"), st column 3; 0A = LISTEN.
                cols.len() > 3 && format!("{} ", cols[1]).ends_with(&hex) && cols[3] == "0A"
            })
    })
}

/// A port that was free a moment ago, below the kernel's ephemeral range.
///
/// Members are stopped and started again on the same ports; a port from the
/// ephemeral range (what `bind(:0)` hands out) can meanwhile become the
/// source port of any outgoing connection on the machine, and the restart
/// then fails with "address already in use" (seen in CI: an etcd member
/// could not take back its peer port). Ports below the range are never
/// picked by the kernel.
pub fn free_port() -> u16 {
    // Two ports per service are needed (client+peer, api+cluster); hand out
    // ports that are free and whose successor is free too, and never the
    // same one twice in this process.
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (low.saturating_sub(12_000).max(1025), low.saturating_sub(2));
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 ^ u64::from(std::process::id()) << 20)
        .unwrap_or(1)
        | 1;
    loop {
        // xorshift: spread over the range, different per process and call.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let p = from + (seed % u64::from(to - from)) as u16;
        let mut given = GIVEN.lock().unwrap();
        if given.contains(&p) || given.contains(&(p + 1)) || given.contains(&(p.wrapping_sub(1))) {
            continue;
        }
        let Ok(a) = std::net::TcpListener::bind(("127.0.0.1", p)) else {
            continue;
        };
        let Ok(b) = std::net::TcpListener::bind(("127.0.0.1", p + 1)) else {
            continue;
        };
        drop((a, b));
        given.push(p);
        given.push(p + 1);
        return p;
    }
}
