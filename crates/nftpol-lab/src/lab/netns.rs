//! One named network namespace (`ip netns add`), removed on drop.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

use nix::sched::{CloneFlags, setns};

use super::server::{Port, Servers};
use super::{LabError, run_cmd};
use nftpol::net::Family;
use nftpol::nft::{Netlink, Nft};

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Every lab namespace is named `nftpol-lab-PID-N-ROLE`.
const PREFIX: &str = "nftpol-lab-";

static COUNTER: AtomicU64 = AtomicU64::new(0);
/// `ip netns add` sets up the shared mount of /run/netns on first use, which
/// races when two threads do it at once.
static ADD_LOCK: Mutex<()> = Mutex::new(());
static SWEEP: Once = Once::new();

/// A network namespace this process created. Dropping it stops its servers
/// and deletes it (its interfaces go with it).
#[derive(Debug)]
pub struct Netns {
    name: String,
    servers: Mutex<Vec<Servers>>,
    /// Created by this value (deleted on drop), or only attached to.
    owned: bool,
}

impl Netns {
    /// Creates a namespace with a unique name ending in `role` and brings
    /// its loopback up.
    pub fn create(role: &str) -> Result<Self, LabError> {
        SWEEP.call_once(sweep_stale);
        let role: String = role
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(40)
            .collect();
        let name = format!(
            "{PREFIX}{}-{}-{role}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        {
            let _guard = ADD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            run_cmd(&["ip", "netns", "add", &name])?;
        }
        // From here on, Drop deletes the namespace.
        let ns = Self {
            name,
            servers: Mutex::new(Vec::new()),
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A handle on an existing namespace that another process made (e.g.
    /// the sandbox's pods): usable like any other, never deleted on drop.
    pub fn attach(name: &str) -> Result<Self, LabError> {
        let path = PathBuf::from(NETNS_DIR).join(name);
        if !path.exists() {
            return Err(LabError::Unsupported(format!(
                "no network namespace {name} ({} is missing)",
                path.display()
            )));
        }
        Ok(Self {
            name: name.to_string(),
            servers: Mutex::new(Vec::new()),
            owned: false,
        })
    }

    /// The name `ip netns` knows it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file (`/run/netns/NAME`), for code that opens its
    /// own sockets in it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Runs `f` on a thread that has entered this namespace, and waits for
    /// it. Sockets `f` opens stay in this namespace wherever they are used
    /// later. A panic in `f` is passed on.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        run_in(&self.name, f)
    }

    /// Moves the calling thread into this namespace, for good: only for
    /// threads the lab spawns and ends itself.
    pub(crate) fn enter(&self) -> Result<(), LabError> {
        enter_named(&self.name)
    }

    /// Runs `ip netns exec NAME argv...`; returns its stdout.
    pub fn exec(&self, argv: &[&str]) -> Result<String, LabError> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(argv);
        run_cmd(&full)
    }

    /// Runs `ip -n NAME args...` (cheaper than `exec` for `ip` itself).
    pub fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run_cmd(&full)
    }

    /// Sets sysctls (`key=value`) inside this namespace.
    pub fn sysctl(&self, settings: &[&str]) -> Result<(), LabError> {
        let mut argv = vec!["sysctl", "-q", "-w"];
        argv.extend_from_slice(settings);
        self.exec(&argv).map(|_| ())
    }

    /// An [`Nft`] that runs `nft` inside this namespace.
    pub fn nft(&self) -> Nft {
        Nft::with_command(
            ["ip", "netns", "exec", &self.name, "nft"]
                .map(String::from)
                .to_vec(),
        )
    }

    /// A netlink socket to nf_tables inside this namespace (what `nftpol
    /// run` sends element updates over).
    pub fn netlink(&self) -> Result<Netlink, LabError> {
        Ok(Netlink::open(Some(&self.path()))?)
    }

    /// Forgets every tracked connection (`conntrack -F`), so that flows
    /// seen before a policy change are checked again.
    pub fn conntrack_flush(&self) -> Result<(), LabError> {
        self.exec(&["conntrack", "-F"]).map(|_| ())
    }

    /// Starts TCP, UDP and SCTP servers on `ports` (in each of `families`),
    /// running until this namespace is dropped. TCP: accept, send one
    /// byte `+`, then echo. UDP: echo each datagram to its sender. SCTP: a
    /// listening one-to-one socket served like TCP where the kernel has
    /// SCTP ([`super::probe::kernel_has_sctp`]); otherwise a raw socket of
    /// IP protocol 132 that answers each INIT to one of these ports with an
    /// INIT-ACK and ignores every other packet (nothing beyond the
    /// handshake's first two packets: enough for probes and conntrack).
    pub fn serve(&self, ports: &[Port], families: &[Family]) -> Result<(), LabError> {
        let sockets = self.run(|| Servers::open(ports, families))??;
        let servers = Servers::start(&self.name, sockets)?;
        self.servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(servers);
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Open sockets would keep the namespace alive after its name is gone.
        self.servers
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        if !self.owned {
            return;
        }
        if let Err(e) = run_cmd(&["ip", "netns", "del", &self.name]) {
            eprintln!("lab: could not delete namespace {}: {e}", self.name);
        }
    }
}

/// Moves the calling thread into the namespace `ip netns` knows as `name`.
fn enter_named(name: &str) -> Result<(), LabError> {
    let path = PathBuf::from(NETNS_DIR).join(name);
    let file =
        File::open(&path).map_err(|e| LabError::io(format!("opening {}", path.display()), e))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .map_err(|e| LabError::io(format!("entering {}", path.display()), e.into()))
}

/// [`Netns::run`] by namespace name: for lab objects that outlive a borrow
/// of the [`Netns`] (they fail cleanly once it is gone).
pub(crate) fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_named(name)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Deletes every lab namespace process `pid` made (for a process that was
/// killed before its destructors ran); returns how many.
pub fn remove_namespaces_of(pid: u32) -> usize {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return 0;
    };
    let prefix = format!("{PREFIX}{pid}-");
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .filter(|name| run_cmd(&["ip", "netns", "del", name]).is_ok())
        .count()
}

/// Deletes lab namespaces left by processes that no longer run (a test
/// killed before its destructors ran).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = run_cmd(&["ip", "netns", "del", &name]);
        }
    }
}
