//! The compiler's input: a plain, owned view of the cluster objects it reads.
//!
//! Pods are trimmed to what policy needs (labels, node, IPs, phase, host
//! networking, named container ports). A [`Snapshot`] holds NetworkPolicies
//! as the API's own type (read from files, built by tests), validated when it
//! is compiled; the controller validates each once, as it arrives, and keeps
//! that ([`PolicyObject`](super::policy::PolicyObject)).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::selector::{LabelLookup, LabelSel};

pub use crate::net::Protocol;

/// The label every namespace carries (set by the API server since 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub type Labels = BTreeMap<String, String>;

impl LabelLookup for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A pod's labels: (key, value) pairs sorted by key, every string shared.
///
/// Pods of one workload share one list, and all pods share the keys and the
/// common values (through an [`Interner`]). Five labels as a
/// `BTreeMap<String, String>` take about 900 bytes in 12 allocations; here
/// one allocation of under 200 bytes, or none when the set exists already
/// (100k pods: ~20 MiB less).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PodLabels(Arc<[LabelPair]>);

/// One label of a [`PodLabels`].
type LabelPair = (Arc<str>, Arc<str>);

impl PodLabels {
    /// The value of a label.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// The labels in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As a map.
    pub fn to_map(&self) -> Labels {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A copy with `key` set to `value` (not shared with other pods).
    pub fn with(&self, key: &str, value: &str) -> Self {
        let mut map = self.to_map();
        map.insert(key.to_string(), value.to_string());
        map.into()
    }
}

impl Default for PodLabels {
    fn default() -> Self {
        Labels::new().into()
    }
}

impl LabelLookup for PodLabels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key)
    }
}

/// Unshared: pods trimmed by the controller get theirs from an [`Interner`].
impl From<Labels> for PodLabels {
    fn from(labels: Labels) -> Self {
        Self(
            labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl fmt::Debug for PodLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl serde::Serialize for PodLabels {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

/// A named container port (`spec.containers[].ports[]` with a `name`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// `namespace/name`, the identity of a namespaced object. The namespace is
/// shared: pods trimmed through an [`Interner`] hold one copy per namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: Arc<str>,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The identity of an API object: `default` stands in for a missing
    /// namespace (as kubectl assumes), an empty name for a missing one.
    pub fn from_meta(meta: &ObjectMeta) -> Self {
        Self::new(
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.clone().unwrap_or_default(),
        )
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
/// few thousand label sets instead of 100k, and every label key once
/// ([`PodLabels::with`] gives one pod other labels).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub key: ObjectKey,
    pub labels: PodLabels,
    pub node: Option<Arc<str>>,
    /// `status.podIPs` (or `status.podIP` when the list is absent), parsed.
    pub ips: PodIps,
    pub host_network: bool,
    /// Whether `metadata.deletionTimestamp` is set: the pod is going away,
    /// and a pod that is not takes its addresses over.
    pub deleting: bool,
    /// `metadata.creationTimestamp` in seconds since the Unix epoch (0 when
    /// unknown); among pods claiming one address, the newest owns it.
    pub created: u32,
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
        let listed: Vec<&str> = match status {
            Some(status) => match status.pod_ips.as_deref() {
                Some(list) if !list.is_empty() => list.iter().map(|p| p.ip.as_str()).collect(),
                _ => status.pod_ip.as_deref().into_iter().collect(),
            },
            None => Vec::new(),
        };
        // Once each, in the order given (`::ffff:10.0.0.1` and `10.0.0.1`
        // are one address).
        let mut ips: Vec<IpAddr> = Vec::new();
        for ip in listed.into_iter().filter_map(parse_pod_ip) {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
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
                interner.str(meta.namespace.as_deref().unwrap_or("default")),
                meta.name.clone().unwrap_or_default(),
            ),
            labels: interner.labels(meta.labels.as_ref().unwrap_or(&Labels::new())),
            node: spec
                .and_then(|s| s.node_name.as_deref())
                .map(|n| interner.str(n)),
            ips: ips.into(),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            deleting: meta.deletion_timestamp.is_some(),
            created: meta
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second().clamp(0, u32::MAX as i64) as u32),
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

/// Parses a pod address in its canonical form: an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`) is the IPv4 address `a.b.c.d`, which is what the
/// pod's packets carry and what the dispatch must find.
pub fn parse_pod_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// A pod's addresses. Kubernetes gives a pod at most one per family, so
/// two are kept inline (a `Vec` costs a 32-byte allocation per pod); a
/// longer list, which the API server would not accept, goes to the heap.
#[derive(Clone, Eq)]
pub enum PodIps {
    Inline(u8, [IpAddr; 2]),
    Heap(Box<[IpAddr]>),
}

impl PodIps {
    const NONE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

    pub fn new() -> Self {
        Self::Inline(0, [Self::NONE; 2])
    }

    pub fn as_slice(&self) -> &[IpAddr] {
        match self {
            Self::Inline(n, ips) => &ips[..*n as usize],
            Self::Heap(ips) => ips,
        }
    }

    pub fn push(&mut self, ip: IpAddr) {
        match self {
            Self::Inline(n, ips) if (*n as usize) < ips.len() => {
                ips[*n as usize] = ip;
                *n += 1;
            }
            _ => {
                let mut all = self.as_slice().to_vec();
                all.push(ip);
                *self = Self::Heap(all.into());
            }
        }
    }

    pub fn clear(&mut self) {
        *self = Self::new();
    }
}

impl Default for PodIps {
    fn default() -> Self {
        Self::new()
    }
}

impl std::ops::Deref for PodIps {
    type Target = [IpAddr];
    fn deref(&self) -> &[IpAddr] {
        self.as_slice()
    }
}

impl<'a> IntoIterator for &'a PodIps {
    type Item = &'a IpAddr;
    type IntoIter = std::slice::Iter<'a, IpAddr>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl PartialEq for PodIps {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl fmt::Debug for PodIps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_slice().fmt(f)
    }
}

impl FromIterator<IpAddr> for PodIps {
    fn from_iter<I: IntoIterator<Item = IpAddr>>(iter: I) -> Self {
        let mut ips = Self::new();
        iter.into_iter().for_each(|ip| ips.push(ip));
        ips
    }
}

impl From<Vec<IpAddr>> for PodIps {
    fn from(ips: Vec<IpAddr>) -> Self {
        ips.into_iter().collect()
    }
}

/// Shares equal label sets, named-port lists and short strings (label keys
/// and values, node names, phases) between the pods trimmed through it, and
/// equal selectors between the policies parsed through it. Entries nothing
/// holds any more are dropped now and then (when the tables have doubled
/// since), so it stays as large as what it shares.
#[derive(Debug, Default)]
pub struct Interner {
    labels: HashSet<Arc<[LabelPair]>>,
    ports: HashSet<Arc<[NamedPort]>>,
    strings: HashSet<Arc<str>>,
    selectors: HashSet<LabelSel>,
    /// Entries left after the last sweep.
    swept: usize,
}

impl Interner {
    /// The shared copy of `labels`.
    pub fn labels(&mut self, labels: &Labels) -> PodLabels {
        let pairs: Vec<LabelPair> = labels
            .iter()
            .map(|(k, v)| (self.str(k), self.str(v)))
            .collect();
        if let Some(shared) = self.labels.get(pairs.as_slice()) {
            return PodLabels(shared.clone());
        }
        let shared: Arc<[LabelPair]> = pairs.into();
        self.labels.insert(shared.clone());
        self.sweep_if_due();
        PodLabels(shared)
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

    /// The shared copy of a selector (equal selectors have one text).
    pub fn selector(&mut self, sel: &LabelSel) -> LabelSel {
        if let Some(shared) = self.selectors.get(sel.canonical()) {
            return shared.clone();
        }
        self.selectors.insert(sel.clone());
        self.sweep_if_due();
        sel.clone()
    }

    /// How many distinct label sets, port lists, strings and selectors it
    /// holds.
    pub fn len(&self) -> usize {
        self.labels.len() + self.ports.len() + self.strings.len() + self.selectors.len()
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
        self.selectors.retain(|s| s.holders() > 1);
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

    /// Labels of a namespace, when its Namespace object is known. Without
    /// it, a namespace's labels are unknown (the object may not have been
    /// seen yet): no namespace selector matches it, not even `{}`.
    pub fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.namespaces.get(name).map(|ns| &ns.labels)
    }

    pub fn pod(&self, key: &ObjectKey) -> Option<&Arc<PodInfo>> {
        self.pods.iter().find(|p| &p.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pod_labels_are_looked_up_by_key_and_convert_back() {
        let map = labels(&[("tier", "db"), ("app", "web"), ("z", "")]);
        let pod: PodLabels = map.clone().into();
        assert_eq!(pod.get("app"), Some("web"));
        assert_eq!(pod.get("z"), Some(""));
        assert_eq!(pod.get("apps"), None);
        assert_eq!(pod.to_map(), map);
        assert_eq!(pod.with("app", "api").get("app"), Some("api"));
        assert_eq!(
            serde_json::to_value(&pod).unwrap(),
            serde_json::json!({"app": "web", "tier": "db", "z": ""})
        );
    }

    #[test]
    fn the_interner_shares_label_sets_and_their_strings() {
        let mut interner = Interner::default();
        let a = interner.labels(&labels(&[("app", "web"), ("version", "v1")]));
        let b = interner.labels(&labels(&[("app", "web"), ("version", "v1")]));
        let c = interner.labels(&labels(&[("app", "web"), ("version", "v2")]));
        assert!(Arc::ptr_eq(&a.0, &b.0), "equal sets are one");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(Arc::ptr_eq(&a.0[0].0, &c.0[0].0), "keys are shared");
        assert!(Arc::ptr_eq(&a.0[0].1, &c.0[0].1), "equal values are shared");
    }

    fn api_pod(meta: serde_json::Value, status: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": meta, "spec": {"containers": []}, "status": status,
        }))
        .expect("a pod")
    }

    #[test]
    fn ipv4_mapped_pod_addresses_become_ipv4_once() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let meta = serde_json::json!({"namespace": "x", "name": "a"});
        let pod = api_pod(
            meta.clone(),
            serde_json::json!({"podIPs": [
                {"ip": "::ffff:10.0.0.1"}, {"ip": "fd00::1"}, {"ip": "10.0.0.1"},
                {"ip": "::ffff:a00:2"}
            ]}),
        );
        assert_eq!(
            &*PodInfo::from_pod(&pod).ips,
            &[ip("10.0.0.1"), ip("fd00::1"), ip("10.0.0.2")]
        );
        let pod = api_pod(meta, serde_json::json!({"podIP": "::ffff:192.0.2.7"}));
        assert_eq!(&*PodInfo::from_pod(&pod).ips, &[ip("192.0.2.7")]);
        assert_eq!(parse_pod_ip("fd00::ffff:1"), Some(ip("fd00::ffff:1")));
    }

    #[test]
    fn a_trimmed_pod_keeps_its_creation_second_and_deletion_mark() {
        let pod = api_pod(
            serde_json::json!({"namespace": "x", "name": "a",
                "creationTimestamp": "2026-01-02T03:04:05Z",
                "deletionTimestamp": "2026-01-02T03:05:00Z"}),
            serde_json::json!({}),
        );
        let info = PodInfo::from_pod(&pod);
        assert_eq!(info.created, 1_767_323_045);
        assert!(info.deleting);
        let info = PodInfo::from_pod(&api_pod(
            serde_json::json!({"namespace": "x", "name": "a"}),
            serde_json::json!({}),
        ));
        assert_eq!((info.created, info.deleting), (0, false));
    }

    #[test]
    fn pod_ips_keep_two_inline_and_more_on_the_heap() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let mut ips = PodIps::from(vec![v4, v6]);
        assert!(matches!(ips, PodIps::Inline(2, _)));
        assert_eq!(&*ips, &[v4, v6]);
        ips.push(v4);
        assert!(matches!(ips, PodIps::Heap(_)));
        assert_eq!(ips.len(), 3);
        assert_eq!(ips, PodIps::Heap(vec![v4, v6, v4].into()));
        ips.clear();
        assert!(ips.is_empty());
        assert_eq!(ips, PodIps::default());
    }
}
