//! A whole Flannel cluster in network namespaces, with the Kubernetes side
//! played by the dev server and the real `nftpol run` on every node: what
//! the conformance runner and `nftpol-lab sandbox` stand on.
//!
//! ```text
//!   host: dev server 127.0.0.1:PORT (kubectl)      LAN namespace: lan0 192.168.56.1
//!                 │ same store                       (the dev server listens here too)
//!   ┌─────────────┴────────────────┐               ┌──────────────────────────────┐
//!   │ node-1  eth0 192.168.56.11   │── VXLAN ──────│ node-2  eth0 192.168.56.12   │
//!   │ cni0 10.244.1.1/24, flannel.1│  (VNI 1,      │ cni0 10.244.2.1/24, flannel.1│
//!   │ Flannel's iptables rules     │   UDP 8472)   │ Flannel's iptables rules     │
//!   │ nftpol run ── watches ───────┼── the LAN ────┼── nftpol run                 │
//!   │ pods (namespaces on cni0)    │               │ pods                         │
//!   └──────────────────────────────┘               └──────────────────────────────┘
//! ```
//!
//! The caller describes the cluster with Kubernetes objects
//! ([`ClusterSpec`]): Namespaces and Pods (with `nodeName`, `status.podIP`
//! and container ports). Every running, pod-network Pod with an IPv4
//! address becomes a lab pod on its node, serving its container ports; all
//! objects are created through the API before the controllers start.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Namespace, Pod as ApiPod};
use kube::Api;
use kube::api::PostParams;

use super::{
    Controller, ControllerConfig, LabError, Lan, Nftpol, Node, NodeConfig, Pod, Port, Probe,
    flannel_vxlan_mesh, probe_all,
};
use crate::devserver::{self, DevServer, Handle};
use nftpol::compiler::Protocol;
use nftpol::watch::{NAMESPACES, PODS, POLICIES};

/// Flannel's default cluster network; node N gets 10.244.N.0/24.
pub const CLUSTER_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 244, 0, 0), 16);
/// The MTU Flannel's VXLAN backend gives pods (1500 less the VXLAN header).
pub const VXLAN_MTU: u32 = 1450;
/// The kinds whose changes the controllers report per kind in `/status`.
pub const KINDS: [&str; 3] = [PODS, NAMESPACES, POLICIES];

/// Whether each ordered pair of pods (`ns/name`, `ns/name`) connected.
pub type Reachability = BTreeMap<(String, String), bool>;

/// What to build.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Node names; node `i` (from 0) gets index `i + 1`: pod network
    /// 10.244.(i+1).0/24, LAN address 192.168.56.(11+i).
    pub nodes: Vec<String>,
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<ApiPod>,
    /// The nftpol binary the controllers run.
    pub binary: Nftpol,
    /// Where the dev server listens for the host (kubectl); port 0: any.
    pub api_listen: SocketAddr,
    /// The controllers' `--resync-period`.
    pub resync_period: Duration,
    /// The controllers' `RUST_LOG`.
    pub log_filter: String,
}

impl ClusterSpec {
    /// Nodes, namespaces and pods; the API on a free loopback port; a
    /// one-minute resync; `info` logs.
    pub fn new(
        binary: impl Into<Nftpol>,
        nodes: &[&str],
        namespaces: Vec<Namespace>,
        pods: Vec<ApiPod>,
    ) -> Self {
        Self {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            namespaces,
            pods,
            binary: binary.into(),
            api_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            resync_period: Duration::from_secs(60),
            log_filter: "info".into(),
        }
    }
}

/// A running cluster. Dropping it stops the controllers and the dev server
/// and removes every namespace it made (the nodes' rules go with them).
pub struct Cluster {
    // Field order is drop order: controllers before the nodes they run in.
    controllers: Vec<Controller>,
    pods: BTreeMap<String, Pod>,
    nodes: Vec<Node>,
    lan: Lan,
    server: Option<Handle>,
    client: kube::Client,
    node_kubeconfig: TempFile,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("nodes", &self.nodes)
            .field("pods", &self.pods.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A lab pod to create for a Pod object.
struct LabPodPlan {
    key: String,
    node: usize,
    ipv4: Ipv4Addr,
    ports: Vec<Port>,
}

impl Cluster {
    /// Builds the network, starts the dev server with the objects, starts
    /// one controller per node and waits until every controller is ready
    /// (it has applied its first full ruleset).
    pub fn start(spec: ClusterSpec, ready_timeout: Duration) -> Result<Self, ClusterError> {
        let plans = plan_lab_pods(&spec)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| LabError::io("starting a tokio runtime", e))?;

        // The network: LAN, nodes on it, VXLAN between them, Flannel's rules.
        let lan = Lan::new()?;
        let mut nodes = Vec::new();
        for (i, name) in spec.nodes.iter().enumerate() {
            let index = u8::try_from(i + 1)
                .ok()
                .filter(|n| *n < 200)
                .ok_or_else(|| ClusterError::Spec(format!("too many nodes ({})", i + 1)))?;
            let node = Node::new(NodeConfig::new(name, index).mtu(VXLAN_MTU))?;
            node.join_lan(&lan)?;
            node.install_flannel_iptables(CLUSTER_CIDR)?;
            nodes.push(node);
        }
        flannel_vxlan_mesh(&nodes.iter().collect::<Vec<_>>())?;
        let mut pods = BTreeMap::new();
        for plan in plans {
            let pod = nodes[plan.node].add_pod_with(&plan.key, plan.ipv4, None)?;
            pod.serve(&plan.ports)?;
            pods.insert(plan.key, pod);
        }

        // The API: one store, served on the host's loopback and in the LAN.
        let mut server = rt
            .block_on(DevServer::start(devserver::Config {
                listen: spec.api_listen,
                ..devserver::Config::default()
            }))
            .map_err(|e| ClusterError::Api(format!("starting the dev server: {e}")))?;
        let port = server.addr.port();
        {
            let _in_rt = rt.enter();
            server
                .serve_also(lan.listen_tcp(port)?)
                .map_err(|e| ClusterError::Api(format!("serving in the LAN: {e}")))?;
        }
        let client = {
            let _in_rt = rt.enter();
            server
                .client()
                .map_err(|e| ClusterError::Api(format!("a client for the dev server: {e}")))?
        };
        let mut cluster = Self {
            controllers: Vec::new(),
            pods,
            nodes,
            node_kubeconfig: TempFile::new("node-kubeconfig")?,
            lan,
            server: Some(server),
            client,
            rt,
        };
        cluster.create_objects(&spec)?;

        // One controller per node, reading the API over the LAN.
        std::fs::write(
            &cluster.node_kubeconfig.0,
            devserver::kubeconfig_yaml(&format!("http://{}:{port}", cluster.lan.ipv4())),
        )
        .map_err(|e| LabError::io("writing the nodes' kubeconfig", e))?;
        for node in &cluster.nodes {
            let config = ControllerConfig {
                resync_period: spec.resync_period,
                log_filter: spec.log_filter.clone(),
                ..ControllerConfig::new(
                    spec.binary.clone(),
                    node.name(),
                    &cluster.node_kubeconfig.0,
                )
            };
            cluster.controllers.push(Controller::start(node, config)?);
        }
        for c in &cluster.controllers {
            c.wait_ready(ready_timeout).map_err(ClusterError::Sync)?;
        }
        Ok(cluster)
    }

    fn create_objects(&self, spec: &ClusterSpec) -> Result<(), ClusterError> {
        let pp = PostParams::default();
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        for ns in &spec.namespaces {
            let name = ns.metadata.name.clone().unwrap_or_default();
            let mut ns = ns.clone();
            // The dev server starts with default, kube-system, ...: replace those.
            let existing = self
                .block_on(namespaces.get_opt(&name))
                .map_err(|e| ClusterError::Api(format!("reading namespace {name}: {e}")))?;
            let written = match existing {
                Some(old) => {
                    ns.metadata.resource_version = old.metadata.resource_version;
                    self.block_on(namespaces.replace(&name, &pp, &ns))
                }
                None => {
                    ns.metadata.resource_version = None;
                    self.block_on(namespaces.create(&pp, &ns))
                }
            };
            written.map_err(|e| ClusterError::Api(format!("writing namespace {name}: {e}")))?;
        }
        for pod in &spec.pods {
            let key = object_key(&pod.metadata);
            let api: Api<ApiPod> = Api::namespaced(
                self.client.clone(),
                pod.metadata.namespace.as_deref().unwrap_or("default"),
            );
            let mut pod = pod.clone();
            pod.metadata.resource_version = None;
            let status = pod.status.clone();
            let created = self
                .block_on(api.create(&pp, &pod))
                .map_err(|e| ClusterError::Api(format!("creating pod {key}: {e}")))?;
            // A real API server drops the status on create; write it then.
            if status.is_some() && created.status.is_none() {
                let mut with_status = created;
                with_status.status = status;
                let name = with_status.metadata.name.clone().unwrap_or_default();
                self.block_on(api.replace_status(&name, &pp, &with_status))
                    .map_err(|e| ClusterError::Api(format!("setting the status of {key}: {e}")))?;
            }
        }
        Ok(())
    }

    /// Runs a future on the cluster's runtime (for API calls).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A client of the dev server.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The dev server (its store, resourceVersion, kubeconfig).
    pub fn server(&self) -> &Handle {
        self.server
            .as_ref()
            .expect("the dev server runs until drop")
    }

    /// The current resourceVersion of the API.
    pub fn resource_version(&self) -> u64 {
        self.server().resource_version()
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn controllers(&self) -> &[Controller] {
        &self.controllers
    }

    /// The lab pods, by `namespace/name`.
    pub fn pods(&self) -> &BTreeMap<String, Pod> {
        &self.pods
    }

    /// Waits until every controller has enforced, for each kind given, every
    /// change up to that resourceVersion (see `/status`'s `synced`).
    pub fn wait_enforced(
        &self,
        per_kind: &BTreeMap<&'static str, u64>,
        timeout: Duration,
    ) -> Result<(), String> {
        if per_kind.is_empty() {
            return Ok(());
        }
        for c in &self.controllers {
            c.poll(timeout, |st| {
                per_kind
                    .iter()
                    .all(|(kind, rv)| st.synced.get(*kind).is_some_and(|s| s >= rv))
            })
            .map_err(|e| format!("waiting for {per_kind:?}: {e}"))?;
        }
        Ok(())
    }

    /// `conntrack -F` in every node: flows seen before a change are
    /// checked again.
    pub fn conntrack_flush(&self) -> Result<(), LabError> {
        self.nodes.iter().try_for_each(Node::conntrack_flush)
    }

    /// Probes every ordered pair of distinct pods on each port at once.
    /// Answers: per port, `(from, to) → connected`.
    pub fn probe_matrix(
        &self,
        ports: &[Port],
        timeout: Duration,
    ) -> Result<Vec<Reachability>, LabError> {
        let mut probes = Vec::new();
        let mut index = Vec::new();
        for (pi, port) in ports.iter().enumerate() {
            for (from, src) in &self.pods {
                for (to, dst) in &self.pods {
                    if from == to {
                        continue;
                    }
                    probes.push(Probe {
                        from: src.netns(),
                        to: SocketAddr::from((dst.ipv4(), port.port)),
                        proto: port.proto,
                    });
                    index.push((pi, from.clone(), to.clone()));
                }
            }
        }
        let answers = probe_all(&probes, timeout)?;
        let mut out = vec![BTreeMap::new(); ports.len()];
        for ((pi, from, to), ok) in index.into_iter().zip(answers) {
            out[pi].insert((from, to), ok);
        }
        Ok(out)
    }

    /// The kubeconfig for the host (kubectl).
    pub fn kubeconfig(&self) -> String {
        self.server().kubeconfig()
    }

    /// Stops the dev server's tasks before the runtime goes.
    fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            self.rt.block_on(server.shutdown());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Controllers first (they would log the API's absence), then the API.
        self.controllers.clear();
        self.stop_server();
    }
}

/// Why a cluster could not be built or driven.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error("cluster spec: {0}")]
    Spec(String),
    #[error("API: {0}")]
    Api(String),
    #[error("controller: {0}")]
    Sync(String),
}

/// `namespace/name` of an object.
pub fn object_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// Which Pod objects get a lab pod, where, with which address and ports.
/// Pods that are finished, on the host network, without a node of the
/// spec or without an IPv4 address in their node's pod network get none
/// (the controller still sees their objects).
fn plan_lab_pods(spec: &ClusterSpec) -> Result<Vec<LabPodPlan>, ClusterError> {
    let mut out = Vec::new();
    for pod in &spec.pods {
        let key = object_key(&pod.metadata);
        let pod_spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        if pod_spec.and_then(|s| s.host_network).unwrap_or(false)
            || matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        {
            continue;
        }
        let Some(node) = pod_spec
            .and_then(|s| s.node_name.as_deref())
            .and_then(|n| spec.nodes.iter().position(|x| x == n))
        else {
            continue;
        };
        let ipv4 = status
            .into_iter()
            .flat_map(|s| {
                s.pod_ips
                    .iter()
                    .flatten()
                    .map(|p| p.ip.clone())
                    .chain(s.pod_ip.clone())
            })
            .find_map(|ip| ip.parse::<Ipv4Addr>().ok());
        let Some(ipv4) = ipv4 else { continue };
        let net = node_pod_network(node);
        if !net.contains(&ipv4) || ipv4 == net.network() || ipv4 == net.addr() {
            return Err(ClusterError::Spec(format!(
                "pod {key}: {ipv4} is not a pod address of node {} ({net})",
                spec.nodes[node]
            )));
        }
        let mut ports: Vec<Port> = pod_spec
            .into_iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                let proto = Protocol::parse(p.protocol.as_deref().unwrap_or("TCP"))?;
                Some(Port {
                    proto,
                    port: u16::try_from(p.container_port).ok()?,
                })
            })
            .collect();
        ports.sort();
        ports.dedup();
        out.push(LabPodPlan {
            key,
            node,
            ipv4,
            ports,
        });
    }
    Ok(out)
}

/// Node `i`'s pod network (index `i + 1`), with the bridge address.
fn node_pod_network(i: usize) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(10, 244, (i + 1) as u8, 1), 24)
}

/// A file in the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(what: &str) -> Result<Self, LabError> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "nftpol-lab-{}-{}-{what}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        Ok(Self(path))
    }

    #[allow(dead_code)]
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
