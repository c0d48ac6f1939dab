//! `nftpol-lab sandbox`: the two-node cluster of the conformance runner with
//! the pods of `examples/cluster.yaml`, left running for a person to play
//! with: `kubectl apply -f examples/policies/...` and watch the TCP/80
//! reachability matrix change.
//!
//! `up` starts a background process (`sandbox serve`) that owns the
//! cluster (namespaces, pod servers, dev server, one `nftpol run` per node)
//! and writes a state file once everything is ready; `probe` reads the
//! state file and probes from a process of its own; `down` stops the
//! background process, which removes everything it made, and sweeps what
//! a killed one left behind.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Namespace, Pod as ApiPod};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::lab::{self, Cluster, ClusterSpec, DEFAULT_TIMEOUT, Netns, Nftpol, Port, Probe};
use nftpol::compiler::Protocol;

/// The cluster the sandbox starts with.
pub const EMBEDDED_CLUSTER: &str = include_str!("../../../examples/cluster.yaml");
/// Where `up` keeps the state file, the kubeconfig and the log.
pub const DEFAULT_STATE_DIR: &str = "/run/nftpol-sandbox";
/// How long `up` waits for the cluster.
const UP_TIMEOUT: Duration = Duration::from_secs(120);

/// What `sandbox serve` writes once the cluster is ready.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    /// The `sandbox serve` process.
    pub pid: u32,
    pub api_url: String,
    pub kubeconfig: PathBuf,
    pub pods: Vec<PodState>,
    /// The `nftpol run` processes (for `down` after a crash).
    pub controller_pids: Vec<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodState {
    /// `namespace/name`.
    pub key: String,
    pub node: String,
    pub netns: String,
    pub ip: Ipv4Addr,
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn read_state(dir: &Path) -> anyhow::Result<Option<State>> {
    let path = state_file(dir);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn need_root() -> anyhow::Result<()> {
    if let Some(why) = lab::unavailable() {
        bail!("the sandbox needs root, `ip` and `nft` ({why})");
    }
    Ok(())
}

/// `nftpol-lab sandbox up`: starts the background process, waits until the
/// cluster is ready, prints how to use it and the matrix.
pub fn up(dir: &Path, api: SocketAddr, out: &mut dyn Write) -> anyhow::Result<()> {
    need_root()?;
    if let Some(state) = read_state(dir)?
        && alive(state.pid)
    {
        writeln!(out, "The sandbox is already up (process {}).", state.pid)?;
        print_usage(&state, out)?;
        return print_matrix(&state, out);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let _ = std::fs::remove_file(state_file(dir));
    let log_path = dir.join("sandbox.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let exe = std::env::current_exe().context("finding the nftpol-lab binary")?;
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new(&exe)
            .args(["sandbox", "serve", "--state-dir"])
            .arg(dir)
            .arg("--api")
            .arg(api.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C in this terminal does not stop it.
            .process_group(0)
            .spawn()
            .context("starting the sandbox process")?
    };
    writeln!(
        out,
        "Starting the sandbox (2 nodes, Flannel VXLAN, dev API server, nftpol per node)..."
    )?;
    let started = Instant::now();
    let state = loop {
        if let Some(state) = read_state(dir)? {
            break state;
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!("the sandbox process ended ({status}) before it was ready:\n{log}");
        }
        if started.elapsed() > UP_TIMEOUT {
            let _ = child.kill();
            bail!(
                "the sandbox was not ready after {UP_TIMEOUT:?}; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    writeln!(
        out,
        "Up in {:.1} s (log: {}).",
        started.elapsed().as_secs_f64(),
        log_path.display()
    )?;
    print_usage(&state, out)?;
    print_matrix(&state, out)
}

fn print_usage(state: &State, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "\nAPI server (development only): {}\n\
         Use it:   export KUBECONFIG={}\n\
         Try:      kubectl apply -f examples/policies/01-default-deny-ingress.yaml\n\
         Then:     cargo sandbox probe       (the matrix again; or nftpol-lab sandbox probe)\n\
         Finally:  cargo sandbox down        (removes everything)\n",
        state.api_url,
        state.kubeconfig.display()
    )?;
    Ok(())
}

/// `nftpol-lab sandbox probe`.
pub fn probe(dir: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    need_root()?;
    let state = running_state(dir)?;
    print_matrix(&state, out)
}

fn running_state(dir: &Path) -> anyhow::Result<State> {
    match read_state(dir)? {
        Some(state) if alive(state.pid) => Ok(state),
        _ => bail!(
            "the sandbox is not running; start it with `cargo sandbox` (or `nftpol-lab sandbox`)"
        ),
    }
}

/// Probes TCP/80 between every pair of pods and prints the matrix.
fn print_matrix(state: &State, out: &mut dyn Write) -> anyhow::Result<()> {
    let port = Port {
        proto: Protocol::Tcp,
        port: 80,
    };
    let namespaces: Vec<Netns> = state
        .pods
        .iter()
        .map(|p| Netns::attach(&p.netns))
        .collect::<Result<_, _>>()?;
    let mut probes = Vec::new();
    for (i, ns) in namespaces.iter().enumerate() {
        for (j, to) in state.pods.iter().enumerate() {
            if i != j {
                probes.push(Probe {
                    from: ns,
                    to: SocketAddr::from((to.ip, port.port)),
                    proto: port.proto,
                });
            }
        }
    }
    let answers = lab::probe_all(&probes, DEFAULT_TIMEOUT)?;
    let mut cell = BTreeMap::new();
    let mut it = answers.into_iter();
    for i in 0..state.pods.len() {
        for j in 0..state.pods.len() {
            if i != j {
                cell.insert((i, j), it.next().expect("one answer per probe"));
            }
        }
    }
    write!(out, "{}", render_matrix(&state.pods, &cell, port))?;
    Ok(())
}

/// The matrix as text: rows are clients, columns servers (by number).
fn render_matrix(pods: &[PodState], cell: &BTreeMap<(usize, usize), bool>, port: Port) -> String {
    let w = pods.iter().map(|p| p.key.len()).max().unwrap_or(0);
    let nw = pods.iter().map(|p| p.node.len()).max().unwrap_or(0);
    let mut s = format!(
        "Reachability on {port} (rows: from, columns: to; . connects, X blocked, - self)\n{:>pad$}",
        "",
        pad = 3 + 1 + w + 2 + nw + 1 + 15 + 1
    );
    for j in 0..pods.len() {
        s.push_str(&format!("{:>3}", j + 1));
    }
    s.push('\n');
    for (i, p) in pods.iter().enumerate() {
        s.push_str(&format!(
            "{:>3} {:<w$}  {:<nw$} {:<15} ",
            i + 1,
            p.key,
            p.node,
            p.ip.to_string()
        ));
        for j in 0..pods.len() {
            let c = match cell.get(&(i, j)) {
                None => "-",
                Some(true) => ".",
                Some(false) => "X",
            };
            s.push_str(&format!("{c:>3}"));
        }
        s.push('\n');
    }
    let blocked = cell.values().filter(|v| !**v).count();
    s.push_str(&format!("{blocked} of {} pairs blocked\n", cell.len()));
    s
}

/// `nftpol-lab sandbox down`.
pub fn down(dir: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let Some(state) = read_state(dir)? else {
        writeln!(
            out,
            "No sandbox state in {}: nothing to stop.",
            dir.display()
        )?;
        return Ok(());
    };
    let pid = nix::unistd::Pid::from_raw(state.pid as i32);
    if alive(state.pid) {
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive(state.pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if alive(state.pid) {
            writeln!(out, "The sandbox process did not stop; killing it.")?;
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    // Whatever a killed process left behind.
    for c in &state.controller_pids {
        if alive(*c) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*c as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let removed = lab::remove_namespaces_of(state.pid);
    for f in ["state.json", "kubeconfig"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    writeln!(
        out,
        "Sandbox stopped{}.",
        if removed > 0 {
            format!(" ({removed} leftover namespaces removed)")
        } else {
            String::new()
        }
    )?;
    Ok(())
}

/// `nftpol-lab sandbox serve` (run by `up`): builds the cluster, writes the
/// state, waits for SIGTERM or SIGINT, then removes everything.
pub fn serve(dir: &Path, api: SocketAddr) -> anyhow::Result<()> {
    need_root()?;
    let (namespaces, pods) = embedded_objects()?;
    let nftpol = Nftpol::linked_into_this_binary(&[crate::PRODUCT_COMMAND])
        .context("finding this binary, which runs nftpol on the nodes")?;
    let spec = ClusterSpec {
        api_listen: api,
        resync_period: Duration::from_secs(300),
        ..ClusterSpec::new(nftpol, &["node-1", "node-2"], namespaces, pods)
    };
    let cluster = Cluster::start(spec, Duration::from_secs(60))?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, cluster.kubeconfig())
        .with_context(|| format!("writing {}", kubeconfig.display()))?;
    let node_of = |key: &str| -> String {
        cluster
            .nodes()
            .iter()
            .find(|n| {
                let net = n.config().bridge_v4.trunc();
                cluster
                    .pods()
                    .get(key)
                    .is_some_and(|p| net.contains(&p.ipv4()))
            })
            .map(|n| n.name().to_string())
            .unwrap_or_default()
    };
    let state = State {
        pid: std::process::id(),
        api_url: cluster.server().url.clone(),
        kubeconfig,
        pods: cluster
            .pods()
            .iter()
            .map(|(key, p)| PodState {
                key: key.clone(),
                node: node_of(key),
                netns: p.netns().name().to_string(),
                ip: p.ipv4(),
            })
            .collect(),
        controller_pids: cluster
            .controllers()
            .iter()
            .filter_map(|c| c.pid())
            .collect(),
    };
    // Written whole, then renamed: `up` never reads half a file.
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&state)?)?;
    std::fs::rename(&tmp, state_file(dir))?;
    tracing::info!(pods = state.pods.len(), url = %state.api_url, "sandbox ready");
    cluster.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
    tracing::info!("sandbox stopping");
    drop(cluster);
    let _ = std::fs::remove_file(state_file(dir));
    Ok(())
}

/// The Namespaces and Pods of `examples/cluster.yaml`.
pub fn embedded_objects() -> anyhow::Result<(Vec<Namespace>, Vec<ApiPod>)> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple_with_options(EMBEDDED_CLUSTER, nftpol::load::yaml_options())
            .context("examples/cluster.yaml")?;
    let mut namespaces = Vec::new();
    let mut pods = Vec::new();
    for doc in docs {
        match doc.get("kind").and_then(Value::as_str) {
            Some("Namespace") => namespaces.push(serde_json::from_value(doc)?),
            Some("Pod") => pods.push(serde_json::from_value(doc)?),
            _ => {}
        }
    }
    Ok((namespaces, pods))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_cluster_has_pods_on_both_nodes() {
        let (namespaces, pods) = embedded_objects().unwrap();
        assert!(namespaces.len() >= 3);
        for node in ["node-1", "node-2"] {
            assert!(
                pods.iter()
                    .any(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some(node))
            );
        }
    }

    #[test]
    fn the_matrix_marks_blocked_pairs_and_counts_them() {
        let pods: Vec<PodState> = ["shop/a", "shop/b"]
            .iter()
            .enumerate()
            .map(|(i, k)| PodState {
                key: k.to_string(),
                node: "node-1".into(),
                netns: String::new(),
                ip: Ipv4Addr::new(10, 244, 1, 10 + i as u8),
            })
            .collect();
        let cell = BTreeMap::from([((0, 1), false), ((1, 0), true)]);
        let text = render_matrix(
            &pods,
            &cell,
            Port {
                proto: Protocol::Tcp,
                port: 80,
            },
        );
        let rows: Vec<&str> = text.lines().collect();
        assert!(rows[2].trim_end().ends_with("-  X"), "{text}");
        assert!(rows[3].trim_end().ends_with(".  -"), "{text}");
        assert!(text.ends_with("1 of 2 pairs blocked\n"));
    }
}
