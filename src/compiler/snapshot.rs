//! The compiler's input: a plain, owned view of the cluster objects it reads.
//!
//! Pods are trimmed to what policy needs (labels, node, IPs, phase, host
//! networking, named container ports). NetworkPolicies stay as the API's own
//! type, because the compiler validates them field by field.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

/// The label every namespace carries (set by the API server since 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub type Labels = BTreeMap<String, String>;

/// Transport protocols a NetworkPolicy port can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the API spelling (`TCP`, `UDP`, `SCTP`; case-sensitive, as the
    /// API server is).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    /// nftables keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }

    pub const ALL: [Protocol; 3] = [Self::Tcp, Self::Udp, Self::Sctp];
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// A named container port (`spec.containers[].ports[]` with a `name`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// `namespace/name`, the identity of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Parses `ns/name`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| Self::new(ns, name))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What the compiler needs of a Pod.
///
/// Labels, named ports, node name and phase are shared: the pods of one
/// workload have the same ones, and an [`Interner`] lets 100k pods hold a
/// few thousand label sets instead of 100k (`Arc::make_mut` changes one
/// pod's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub key: ObjectKey,
    pub labels: Arc<Labels>,
    pub node: Option<Arc<str>>,
    /// `status.podIPs` (or `status.podIP` when the list is absent), parsed.
    pub ips: Vec<IpAddr>,
    pub host_network: bool,
    /// `status.phase`, when known.
    pub phase: Option<Arc<str>>,
    /// Named container ports of the pod's (regular) containers.
    pub named_ports: Arc<[NamedPort]>,
}

impl PodInfo {
    /// Trims an API Pod. Unparseable IPs and unnamed or malformed ports are
    /// left out (the API server never stores them).
    pub fn from_pod(pod: &Pod) -> Self {
        Self::from_pod_in(pod, &mut Interner::default())
    }

    /// [`from_pod`](Self::from_pod), sharing labels and ports through
    /// `interner` with the pods trimmed before.
    pub fn from_pod_in(pod: &Pod, interner: &mut Interner) -> Self {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = Vec::new();
        if let Some(status) = status {
            match status.pod_ips.as_deref() {
                Some(list) if !list.is_empty() => {
                    ips.extend(list.iter().filter_map(|p| p.ip.parse::<IpAddr>().ok()));
                }
                _ => ips.extend(
                    status
                        .pod_ip
                        .as_deref()
                        .and_then(|ip| ip.parse::<IpAddr>().ok()),
                ),
            }
        }
        ips.dedup();
        let mut named_ports = Vec::new();
        for container in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
            for p in container.ports.as_deref().unwrap_or_default() {
                let (Some(name), Ok(port)) = (p.name.as_ref(), u16::try_from(p.container_port))
                else {
                    continue;
                };
                let proto = p.protocol.as_deref().unwrap_or("TCP");
                if let Some(protocol) = Protocol::parse(proto) {
                    named_ports.push(NamedPort {
                        name: name.clone(),
                        protocol,
                        port,
                    });
                }
            }
        }
        Self {
            key: ObjectKey::new(
                meta.namespace.clone().unwrap_or_else(|| "default".into()),
                meta.name.clone().unwrap_or_default(),
            ),
            labels: interner.labels(meta.labels.clone().unwrap_or_default()),
            node: spec
                .and_then(|s| s.node_name.as_deref())
                .map(|n| interner.str(n)),
            ips,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            phase: status
                .and_then(|s| s.phase.as_deref())
                .map(|p| interner.str(p)),
            named_ports: interner.ports(named_ports),
        }
    }

    /// Whether policy applies to this pod at all: it has an IP, does not use
    /// the host's network and has not finished.
    pub fn is_active(&self) -> bool {
        !self.host_network
            && !self.ips.is_empty()
            && !matches!(self.phase.as_deref(), Some("Succeeded" | "Failed"))
    }

    /// Why [`is_active`](Self::is_active) is false, for explanations.
    pub fn inactive_reason(&self) -> Option<&'static str> {
        if self.host_network {
            Some("uses the host network (never selected by NetworkPolicy)")
        } else if self.ips.is_empty() {
            Some("has no IP yet")
        } else if matches!(self.phase.as_deref(), Some("Succeeded" | "Failed")) {
            Some("has finished (phase Succeeded or Failed)")
        } else {
            None
        }
    }

    /// The number a named port resolves to on this pod for a protocol.
    pub fn resolve_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// Shares equal label sets, named-port lists and short strings (node
/// names, phases) between the pods trimmed through it. Entries no pod holds any more are dropped now and then (when
/// the tables have doubled since), so it stays as large as what it shares.
#[derive(Debug, Default)]
pub struct Interner {
    labels: HashSet<Arc<Labels>>,
    ports: HashSet<Arc<[NamedPort]>>,
    strings: HashSet<Arc<str>>,
    /// Entries left after the last sweep.
    swept: usize,
}

impl Interner {
    /// The shared copy of `labels`.
    pub fn labels(&mut self, labels: Labels) -> Arc<Labels> {
        if let Some(shared) = self.labels.get(&labels) {
            return shared.clone();
        }
        let shared = Arc::new(labels);
        self.labels.insert(shared.clone());
        self.sweep_if_due();
        shared
    }

    /// The shared copy of a list of named ports.
    pub fn ports(&mut self, ports: Vec<NamedPort>) -> Arc<[NamedPort]> {
        if let Some(shared) = self.ports.get(ports.as_slice()) {
            return shared.clone();
        }
        let shared: Arc<[NamedPort]> = ports.into();
        self.ports.insert(shared.clone());
        self.sweep_if_due();
        shared
    }

    /// The shared copy of a string.
    pub fn str(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        let shared: Arc<str> = s.into();
        self.strings.insert(shared.clone());
        self.sweep_if_due();
        shared
    }

    /// How many distinct label sets, port lists and strings it holds.
    pub fn len(&self) -> usize {
        self.labels.len() + self.ports.len() + self.strings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn sweep_if_due(&mut self) {
        if self.len() < 2 * self.swept + 1024 {
            return;
        }
        // Held only here: no pod uses it any more.
        self.labels.retain(|l| Arc::strong_count(l) > 1);
        self.ports.retain(|p| Arc::strong_count(p) > 1);
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.swept = self.len();
    }
}

/// What the compiler needs of a Namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: Labels,
}

impl NamespaceInfo {
    pub fn new(name: impl Into<String>, labels: Labels) -> Self {
        let name = name.into();
        let mut labels = labels;
        // The API server always sets this label; objects read offline may lack it.
        labels
            .entry(NAMESPACE_NAME_LABEL.to_string())
            .or_insert_with(|| name.clone());
        Self { name, labels }
    }

    pub fn from_namespace(ns: &Namespace) -> Self {
        Self::new(
            ns.metadata.name.clone().unwrap_or_default(),
            ns.metadata.labels.clone().unwrap_or_default(),
        )
    }
}

/// A consistent view of the cluster at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub namespaces: BTreeMap<String, NamespaceInfo>,
    pub pods: Vec<Arc<PodInfo>>,
    pub policies: Vec<Arc<NetworkPolicy>>,
}

impl Snapshot {
    pub fn add_namespace(&mut self, ns: NamespaceInfo) {
        self.namespaces.insert(ns.name.clone(), ns);
    }

    pub fn add_pod(&mut self, pod: PodInfo) {
        self.pods.push(Arc::new(pod));
    }

    pub fn add_policy(&mut self, policy: NetworkPolicy) {
        self.policies.push(Arc::new(policy));
    }

    /// Labels of a namespace; a namespace with no object still has its
    /// name label, as it would on a real API server.
    pub fn namespace_labels(&self, name: &str) -> Labels {
        match self.namespaces.get(name) {
            Some(ns) => ns.labels.clone(),
            None => NamespaceInfo::new(name, Labels::new()).labels,
        }
    }

    pub fn pod(&self, key: &ObjectKey) -> Option<&Arc<PodInfo>> {
        self.pods.iter().find(|p| &p.key == key)
    }
}
