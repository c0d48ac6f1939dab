//! The real controller, `nftpol run`, as a process inside a node's
//! namespace (`ip netns exec NODE nftpol run ...`), with its HTTP endpoints
//! read over the nodes' network: from the LAN namespace at
//! `NODE_LAN_IP:PORT` when the node joined a [`Lan`](super::Lan), else from
//! inside the node at `127.0.0.1:PORT`.
//!
//! The process is killed (SIGKILL) when the [`Controller`] is dropped; its
//! stdout and stderr go to a log file (removed on drop unless
//! `NFTPOL_LAB_KEEP_LOGS` is set) that [`Controller::log_tail`] reads back
//! for failure messages.

use std::ffi::OsString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nftpol::watch::SyncStatus;

use super::http::{HttpResponse, http_get_in};
use super::{LabError, Node};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The program a lab controller runs: the `nftpol` binary itself, or a
/// binary that links the product and runs its command line after leading
/// arguments (`nftpol-lab nftpol run ...`, the sandbox's way: the same code,
/// always as fresh as the lab binary).
#[derive(Clone, Debug)]
pub struct Nftpol {
    pub program: PathBuf,
    pub leading_args: Vec<OsString>,
}

impl Nftpol {
    /// `program` is an `nftpol` binary.
    pub fn binary(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            leading_args: Vec::new(),
        }
    }

    /// The product's command line inside this process's own binary,
    /// after `args` (see `nftpol-lab nftpol`).
    pub fn linked_into_this_binary(args: &[&str]) -> std::io::Result<Self> {
        Ok(Self {
            program: std::env::current_exe()?,
            leading_args: args.iter().map(OsString::from).collect(),
        })
    }

    /// A command that runs `nftpol ARGS...`.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.leading_args);
        cmd
    }

    /// The program line, for errors and logs.
    pub fn display(&self) -> String {
        let mut line = self.program.display().to_string();
        for arg in &self.leading_args {
            line.push(' ');
            line.push_str(&arg.to_string_lossy());
        }
        line
    }
}

impl<P: Into<PathBuf>> From<P> for Nftpol {
    fn from(program: P) -> Self {
        Self::binary(program)
    }
}

/// How to run `nftpol run`.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// The nftpol binary (in integration tests: `env!("CARGO_BIN_EXE_nftpol")`).
    pub binary: Nftpol,
    /// `--node-name`.
    pub node_name: String,
    /// `--kubeconfig`, as the node sees it (its server URL must be reachable
    /// from the node's namespace).
    pub kubeconfig: PathBuf,
    /// `--metrics-addr 0.0.0.0:PORT`.
    pub metrics_port: u16,
    /// `--resync-period`.
    pub resync_period: Duration,
    /// `--min-sync-interval`.
    pub min_sync_interval: Duration,
    /// `RUST_LOG` of the process.
    pub log_filter: String,
    /// More arguments after the others.
    pub extra_args: Vec<String>,
}

impl ControllerConfig {
    /// Port 9798, resync every 2 s, syncs at most every 10 ms, `info` logs.
    pub fn new(binary: impl Into<Nftpol>, node_name: &str, kubeconfig: impl Into<PathBuf>) -> Self {
        Self {
            binary: binary.into(),
            node_name: node_name.to_string(),
            kubeconfig: kubeconfig.into(),
            metrics_port: 9798,
            resync_period: Duration::from_secs(2),
            min_sync_interval: Duration::from_millis(10),
            log_filter: "info".into(),
            extra_args: Vec::new(),
        }
    }
}

/// A running `nftpol run` in a node's namespace.
#[derive(Debug)]
pub struct Controller {
    config: ControllerConfig,
    node_netns: String,
    /// Where the endpoints are read from, and at which address.
    scrape_netns: String,
    status_addr: SocketAddr,
    log_path: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Controller {
    /// How it was started.
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// Starts `nftpol run` inside `node`'s namespace.
    pub fn start(node: &Node, config: ControllerConfig) -> Result<Self, LabError> {
        let (scrape_netns, ip) = match (node.lan_netns_name(), node.lan_ipv4()) {
            (Some(lan), Some(ip)) => (lan.to_string(), ip),
            _ => (node.netns().name().to_string(), Ipv4Addr::LOCALHOST),
        };
        let log_path = std::env::temp_dir().join(format!(
            "nftpol-lab-controller-{}-{}-{}.log",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            node.name()
        ));
        let controller = Self {
            status_addr: SocketAddr::from((ip, config.metrics_port)),
            config,
            node_netns: node.netns().name().to_string(),
            scrape_netns,
            log_path,
            child: Mutex::new(None),
        };
        controller.spawn()?;
        Ok(controller)
    }

    fn spawn(&self) -> Result<(), LabError> {
        let c = &self.config;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| LabError::io(format!("opening {}", self.log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| LabError::io("duplicating the log file", e))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node_netns])
            .arg(&c.binary.program)
            .args(&c.binary.leading_args)
            .arg("run")
            .args(["--node-name", &c.node_name])
            .arg("--kubeconfig")
            .arg(&c.kubeconfig)
            .args(["--metrics-addr", &format!("0.0.0.0:{}", c.metrics_port)])
            .args([
                "--resync-period",
                &format!("{}ms", c.resync_period.as_millis()),
            ])
            .args([
                "--min-sync-interval",
                &format!("{}ms", c.min_sync_interval.as_millis()),
            ])
            .args(&c.extra_args)
            .env("RUST_LOG", &c.log_filter)
            .env("NO_COLOR", "1")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // `ip netns exec` execs the command: the child is nftpol itself.
        let child = cmd
            .spawn()
            .map_err(|e| LabError::io(format!("starting {}", c.binary.display()), e))?;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Child::id)
    }

    /// Whether the process still runs (false once it exited or was killed).
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the process (SIGKILL, no chance to clean up) and reaps it.
    pub fn kill(&self) -> Result<(), LabError> {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            let _ = child.kill();
            child
                .wait()
                .map_err(|e| LabError::io("waiting for the controller", e))?;
        }
        Ok(())
    }

    /// Kills the process if it runs, then starts it again (same arguments,
    /// same log file).
    pub fn restart(&self) -> Result<(), LabError> {
        self.kill()?;
        self.spawn()
    }

    /// Where `/status` and the other endpoints are served.
    pub fn status_addr(&self) -> SocketAddr {
        self.status_addr
    }

    /// `GET path` on the controller's HTTP server (2 s timeout).
    pub fn get(&self, path: &str) -> Result<HttpResponse, LabError> {
        http_get_in(
            &self.scrape_netns,
            self.status_addr,
            path,
            Duration::from_secs(2),
        )
    }

    /// The parsed `/status`.
    pub fn status(&self) -> Result<SyncStatus, LabError> {
        let r = self.get("/status")?;
        if r.status != 200 {
            return Err(LabError::Unsupported(format!(
                "/status answered {}: {}",
                r.status, r.body
            )));
        }
        serde_json::from_str(&r.body).map_err(|e| {
            LabError::Unsupported(format!(
                "/status is not the expected JSON ({e}): {}",
                r.body
            ))
        })
    }

    /// `/readyz`: `Ok(())` when ready (200), `Err(body)` otherwise, also
    /// when the endpoint cannot be reached.
    pub fn readyz(&self) -> Result<(), String> {
        match self.get("/readyz") {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => Err(format!("{} {}", r.status, r.body.trim())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Polls `/status` until every change up to resourceVersion `rv` is
    /// enforced (`synced_resource_version >= rv`). The error names the
    /// last status (or why it could not be read) and ends with the log.
    pub fn wait_synced(&self, rv: u64, timeout: Duration) -> Result<SyncStatus, String> {
        self.poll(timeout, |st| st.synced_resource_version >= rv)
            .map_err(|last| {
                format!(
                    "the controller did not report resourceVersion {rv} enforced within {timeout:?}; \
                     last /status: {last}\n{}",
                    self.log_tail(30)
                )
            })
    }

    /// Polls `/readyz` until it answers 200.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), String> {
        self.wait_readiness(true, timeout)
    }

    /// Polls `/readyz` until it says ready (`true`) or not ready (`false`;
    /// an unreachable endpoint does not count as "not ready").
    pub fn wait_readiness(&self, ready: bool, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            let r = self.get("/readyz");
            last = match &r {
                Ok(r) => format!("{} {}", r.status, r.body.trim()),
                Err(e) => e.to_string(),
            };
            match r {
                Ok(r) if (r.status == 200) == ready => return Ok(()),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "/readyz did not become {} within {timeout:?}; last answer: {last}\n{}",
                    if ready { "ready" } else { "not ready" },
                    self.log_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `/status` until `done` holds; `Err` holds the last status or error.
    pub fn poll(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&SyncStatus) -> bool,
    ) -> Result<SyncStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.status() {
                Ok(st) if done(&st) => return Ok(st),
                Ok(st) => format!("{st:?}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(last);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the process logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `lines` lines of the log, with a header, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        format!(
            "--- last {} lines of the controller log ({}) ---\n{}",
            tail.len(),
            self.log_path.display(),
            tail.join("\n")
        )
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.kill();
        if std::env::var_os("NFTPOL_LAB_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}
