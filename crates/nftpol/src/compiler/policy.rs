//! Validation: an API NetworkPolicy in, a checked model out.
//!
//! The checks are those of the API server's validation, so that a policy read
//! from a file (or from a server that skipped validation) is judged as the
//! cluster would judge it. What is invalid never allows anything: a broken
//! rule is dropped whole (the policy's pods stay isolated), and a policy
//! whose own podSelector cannot be read isolates every pod of its namespace
//! in its directions and allows nothing (an error).
//!
//! Label values are not judged: the API server once accepted values that it
//! rejects now and keeps serving such stored objects, and a selector value
//! is matched literally, as stored, like any other.

use std::fmt;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use kube::core::Selector;

use super::selector::{LabelSel, is_label_key};
use super::snapshot::{Interner, ObjectKey, Protocol};

/// Traffic direction, seen from the selected pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub const BOTH: [Direction; 2] = [Direction::Ingress, Direction::Egress];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        })
    }
}

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Part of a policy allows nothing; the rest is enforced.
    Warning,
    /// The policy cannot be enforced as written: it is skipped (no name, a
    /// duplicate), or it fails closed (its own podSelector cannot be read).
    Error,
}

/// One finding about one policy, naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub policy: ObjectKey,
    /// JSON path of the field, e.g. `spec.ingress[0].from[1].ipBlock.cidr`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NetworkPolicy {}: {}: {}",
            self.policy, self.field, self.message
        )
    }
}

/// Which namespaces a pod peer covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceScope {
    /// The policy's own namespace (podSelector without namespaceSelector).
    Own(String),
    /// Namespaces whose labels match.
    Selected(LabelSel),
}

/// An ipBlock: `cidr` minus every `except`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl Block {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        for e in &self.except {
            write!(f, " except {e}")?;
        }
        Ok(())
    }
}

/// One entry of `from` / `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Pods {
        namespaces: NamespaceScope,
        pods: LabelSel,
    },
    Block(Block),
}

/// One entry of `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// Every port of a protocol (`port` absent).
    All(Protocol),
    /// `port` (..= `endPort`), inclusive.
    Range(Protocol, u16, u16),
    /// A named container port of the destination pod.
    Named(Protocol, String),
}

/// One valid rule. `None` stands for "every peer" / "every port".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Position in the policy's list, for explanations.
    pub index: usize,
    pub peers: Option<Vec<Peer>>,
    pub ports: Option<Vec<PortSpec>>,
}

/// A validated policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub key: ObjectKey,
    pub pod_selector: LabelSel,
    /// `Some` when the policy isolates its pods for ingress; the rules that
    /// are valid (possibly none).
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// The form kept between syncs: every selector and the key's namespace
    /// replaced by the copy `interner` shares, every list trimmed to its
    /// length.
    pub fn compact(&mut self, interner: &mut Interner) {
        self.key.namespace = interner.str(&self.key.namespace);
        self.pod_selector = interner.selector(&self.pod_selector);
        for rules in [&mut self.ingress, &mut self.egress].into_iter().flatten() {
            rules.shrink_to_fit();
            for rule in rules {
                rule.ports.iter_mut().for_each(Vec::shrink_to_fit);
                if let Some(peers) = &mut rule.peers {
                    peers.shrink_to_fit();
                    for peer in peers {
                        if let Peer::Pods { namespaces, pods } = peer {
                            *pods = interner.selector(pods);
                            if let NamespaceScope::Selected(sel) = namespaces {
                                *sel = interner.selector(sel);
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn rules(&self, dir: Direction) -> Option<&[Rule]> {
        match dir {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }
}

/// The identity under which a NetworkPolicy is compiled and reported
/// ([`ObjectKey::from_meta`]: `default` stands in for a missing namespace).
pub fn policy_key(np: &NetworkPolicy) -> ObjectKey {
    ObjectKey::from_meta(&np.metadata)
}

/// A NetworkPolicy as the controller keeps it between syncs and the
/// compiler reads it, validated once when it arrives: its identity (key;
/// uid and generation, for Events), the checked policy and the findings
/// about it. Annotations (such as kubectl's last-applied copy), managed
/// fields and the spec as written are not kept.
///
/// The API's own type holds every selector's `matchLabels` in a B-tree
/// whose first node alone takes 544 bytes, and its metadata has room for
/// every field: 10k policies took ~18 MiB that way. Parsed through the
/// store's [`Interner`], equal selectors (most of them: 108 distinct ones
/// among 21k in the synthetic 10k-policy cluster) are one shared copy.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyObject {
    /// The checked policy, or the key of one that cannot be enforced at all
    /// (it has no name).
    policy: Result<Policy, ObjectKey>,
    /// Whether `metadata.namespace` and `metadata.name` were set (the key
    /// stands in `default` and an empty name for them).
    has_namespace: bool,
    has_name: bool,
    uid: Option<String>,
    generation: Option<i64>,
    diagnostics: Vec<Diagnostic>,
}

impl PolicyObject {
    /// Validates a policy ([`parse_policy`]).
    pub fn new(np: &NetworkPolicy) -> Self {
        Self::new_in(np, &mut Interner::default())
    }

    /// [`new`](Self::new), sharing selectors through `interner` with the
    /// policies parsed before.
    pub fn new_in(np: &NetworkPolicy, interner: &mut Interner) -> Self {
        let m = &np.metadata;
        let mut diagnostics = Vec::new();
        let policy = match parse_policy(np, &mut diagnostics) {
            Some(mut policy) => {
                policy.compact(interner);
                Ok(policy)
            }
            None => Err(policy_key(np)),
        };
        Self {
            policy,
            has_namespace: m.namespace.is_some(),
            has_name: m.name.is_some(),
            uid: m.uid.clone(),
            generation: m.generation,
            diagnostics,
        }
    }

    /// The key the compiler knows it by, as [`policy_key`] makes it.
    pub fn key(&self) -> &ObjectKey {
        match &self.policy {
            Ok(policy) => &policy.key,
            Err(key) => key,
        }
    }

    pub fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }

    pub fn generation(&self) -> Option<i64> {
        self.generation
    }

    /// The checked policy; `None` when it cannot be enforced at all.
    pub fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref().ok()
    }

    /// What its validation found, in the order [`parse_policy`] reports it.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// A reference to the API object, for the Events about it (kind,
    /// apiVersion, namespace, name, uid).
    pub fn object_ref(&self) -> ObjectReference {
        let key = self.key();
        let policy = NetworkPolicy {
            metadata: ObjectMeta {
                namespace: self.has_namespace.then(|| key.namespace.to_string()),
                name: self.has_name.then(|| key.name.clone()),
                uid: self.uid.clone(),
                ..ObjectMeta::default()
            },
            spec: None,
        };
        policy.object_ref(&())
    }
}

/// Validates one policy. Returns `None` (with an error diagnostic) when it
/// cannot be enforced at all (it has no name). A policy whose own
/// podSelector cannot be read selects every pod of its namespace and allows
/// nothing, in the directions it declares.
pub fn parse_policy(np: &NetworkPolicy, diags: &mut Vec<Diagnostic>) -> Option<Policy> {
    let key = policy_key(np);
    let mut findings = Findings {
        policy: key.clone(),
        out: diags,
    };
    if key.name.is_empty() {
        findings.error("metadata.name", "missing; policy skipped");
        return None;
    }
    let default_spec = Default::default();
    let spec = np.spec.as_ref().unwrap_or(&default_spec);
    let (pod_selector, unreadable) = match parse_selector(spec.pod_selector.as_ref()) {
        Ok(sel) => (sel, false),
        Err(e) => {
            // Fail closed: which pods it means is unknown, so it holds
            // every pod of its namespace, and what it would allow too.
            findings.error(
                format!("spec.podSelector{}", e.field),
                format!(
                    "{}; cannot tell which pods it selects, so it isolates every pod of \
                     namespace {} in its directions and allows nothing",
                    e.message, key.namespace
                ),
            );
            (LabelSel::everything(), true)
        }
    };

    let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    let (mut isolates_ingress, mut isolates_egress) = (false, false);
    // The API server defaults an absent or empty list alike (len == 0).
    let policy_types = spec.policy_types.as_ref().filter(|t| !t.is_empty());
    match policy_types {
        None => {
            // The API server's defaulting.
            isolates_ingress = true;
            isolates_egress = has_egress_rules;
        }
        Some(types) => {
            let mut unknown = false;
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => isolates_ingress = true,
                    "Egress" => isolates_egress = true,
                    other => {
                        unknown = true;
                        findings.warn(
                            format!("spec.policyTypes[{i}]"),
                            format!(
                                "unsupported value {other:?} (must be \"Ingress\" or \"Egress\"); \
                                 its pods are isolated in both directions"
                            ),
                        );
                    }
                }
            }
            if unknown {
                // Fail closed: we cannot tell which direction was meant.
                isolates_ingress = true;
                isolates_egress = true;
            }
        }
    }
    // A direction's rules are read only when policyTypes names it (or is
    // absent) and the podSelector could be read: else it allows nothing.
    let rules = |findings: &mut Findings<'_>, direction: Direction| {
        let name = direction.to_string(); // as policyTypes spells it
        let declared = policy_types.is_none_or(|types| types.contains(&name));
        if unreadable || !declared {
            return Vec::new();
        }
        parse_rules(findings, spec, direction)
    };
    let ingress = isolates_ingress.then(|| rules(&mut findings, Direction::Ingress));
    let egress = isolates_egress.then(|| rules(&mut findings, Direction::Egress));
    Some(Policy {
        key,
        pod_selector,
        ingress,
        egress,
    })
}

/// A rule's peers (`from` or `to`) and ports, as written.
type RuleFields<'a> = (
    Option<&'a [NetworkPolicyPeer]>,
    Option<&'a [NetworkPolicyPort]>,
);

/// The rules of one direction (`spec.ingress` with peers in `from`, or
/// `spec.egress` with peers in `to`); invalid ones are reported and left out.
fn parse_rules(
    findings: &mut Findings<'_>,
    spec: &NetworkPolicySpec,
    direction: Direction,
) -> Vec<Rule> {
    let (peer_field, rules): (&str, Vec<RuleFields<'_>>) = match direction {
        Direction::Ingress => (
            "from",
            spec.ingress
                .iter()
                .flatten()
                .map(|r| (r.from.as_deref(), r.ports.as_deref()))
                .collect(),
        ),
        Direction::Egress => (
            "to",
            spec.egress
                .iter()
                .flatten()
                .map(|r| (r.to.as_deref(), r.ports.as_deref()))
                .collect(),
        ),
    };
    rules
        .into_iter()
        .enumerate()
        .filter_map(|(i, (peers, ports))| {
            let path = format!("spec.{}[{i}]", direction.as_str());
            parse_rule(findings, &path, i, peer_field, peers, ports)
        })
        .collect::<Vec<_>>()
}

/// Where the findings about one policy go: each is tagged with its key.
struct Findings<'a> {
    policy: ObjectKey,
    out: &'a mut Vec<Diagnostic>,
}

impl Findings<'_> {
    fn push(&mut self, severity: Severity, field: impl Into<String>, message: impl Into<String>) {
        self.out.push(Diagnostic {
            severity,
            policy: self.policy.clone(),
            field: field.into(),
            message: message.into(),
        });
    }
    fn warn(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, field, message);
    }
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, field, message);
    }
}

/// A field error inside a sub-object: `field` is relative (`.matchLabels[x]`).
struct FieldError {
    field: String,
    message: String,
}

fn field_err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

fn parse_rule(
    findings: &mut Findings<'_>,
    path: &str,
    index: usize,
    peer_field: &str,
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
) -> Option<Rule> {
    let mut errors = Vec::new();
    let peers = match peers {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .filter_map(|(i, p)| match parse_peer(&findings.policy.namespace, p) {
                    Ok(peer) => Some(peer),
                    Err(e) => {
                        errors.push(field_err(
                            format!(".{peer_field}[{i}]{}", e.field),
                            e.message,
                        ));
                        None
                    }
                })
                .collect::<Vec<_>>(),
        ),
    };
    let ports = match ports {
        None | Some([]) => None,
        Some(list) => Some(
            list.iter()
                .enumerate()
                .filter_map(|(i, p)| match parse_port(p) {
                    Ok(port) => Some(port),
                    Err(e) => {
                        errors.push(field_err(format!(".ports[{i}]{}", e.field), e.message));
                        None
                    }
                })
                .collect::<Vec<_>>(),
        ),
    };
    if errors.is_empty() {
        return Some(Rule {
            index,
            peers,
            ports,
        });
    }
    for e in errors {
        findings.warn(
            format!("{path}{}", e.field),
            format!("{}; this rule allows nothing", e.message),
        );
    }
    None
}

fn parse_peer(own_ns: &str, peer: &NetworkPolicyPeer) -> Result<Peer, FieldError> {
    match (&peer.ip_block, &peer.pod_selector, &peer.namespace_selector) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(field_err(
            "",
            "ipBlock may not be combined with podSelector or namespaceSelector",
        )),
        (None, None, None) => Err(field_err(
            "",
            "must specify one of podSelector, namespaceSelector or ipBlock",
        )),
        (Some(block), None, None) => parse_block(block).map(Peer::Block),
        (None, pods, namespaces) => {
            let pods = match pods {
                Some(sel) => parse_selector(Some(sel))
                    .map_err(|e| field_err(format!(".podSelector{}", e.field), e.message))?,
                None => LabelSel::everything(),
            };
            let namespaces = match namespaces {
                Some(sel) => {
                    NamespaceScope::Selected(parse_selector(Some(sel)).map_err(|e| {
                        field_err(format!(".namespaceSelector{}", e.field), e.message)
                    })?)
                }
                None => NamespaceScope::Own(own_ns.to_string()),
            };
            Ok(Peer::Pods { namespaces, pods })
        }
    }
}

/// Parses a CIDR the way Go's net.ParseCIDR does: host bits are allowed and
/// masked off.
fn parse_cidr(s: &str) -> Option<IpNet> {
    let net: IpNet = s.trim().parse().ok()?;
    Some(net.trunc())
}

fn parse_block(block: &IPBlock) -> Result<Block, FieldError> {
    let cidr = parse_cidr(&block.cidr)
        .ok_or_else(|| field_err(".ipBlock.cidr", format!("invalid CIDR {:?}", block.cidr)))?;
    let mut except = Vec::new();
    for (i, e) in block.except.iter().flatten().enumerate() {
        let field = format!(".ipBlock.except[{i}]");
        let net = parse_cidr(e).ok_or_else(|| field_err(&field, format!("invalid CIDR {e:?}")))?;
        // The API server requires each except to be a strict subset of cidr.
        if !(cidr.contains(&net) && net.prefix_len() > cidr.prefix_len()) {
            return Err(field_err(
                field,
                format!("{e} is not a strict subset of cidr {}", block.cidr),
            ));
        }
        except.push(net);
    }
    Ok(Block { cidr, except })
}

fn parse_port(p: &NetworkPolicyPort) -> Result<PortSpec, FieldError> {
    let proto_text = p.protocol.as_deref().unwrap_or("TCP");
    let protocol = Protocol::parse(proto_text).ok_or_else(|| {
        field_err(
            ".protocol",
            format!("unsupported protocol {proto_text:?} (must be TCP, UDP or SCTP)"),
        )
    })?;
    match (&p.port, p.end_port) {
        (None, None) => Ok(PortSpec::All(protocol)),
        (None, Some(_)) => Err(field_err(".endPort", "may not be set without port")),
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                return Err(field_err(".endPort", "may not be set with a named port"));
            }
            if !is_port_name(name) {
                return Err(field_err(
                    ".port",
                    format!("invalid port name {name:?} (must be an IANA service name)"),
                ));
            }
            Ok(PortSpec::Named(protocol, name.clone()))
        }
        (Some(IntOrString::Int(port)), end) => {
            let start = valid_port(*port).ok_or_else(|| {
                field_err(".port", format!("{port} is not a port number (1-65535)"))
            })?;
            let end = match end {
                None => start,
                Some(end) => {
                    let end = valid_port(end).ok_or_else(|| {
                        field_err(".endPort", format!("{end} is not a port number (1-65535)"))
                    })?;
                    if end < start {
                        return Err(field_err(
                            ".endPort",
                            format!("{end} is below port {start}"),
                        ));
                    }
                    end
                }
            };
            Ok(PortSpec::Range(protocol, start, end))
        }
    }
}

fn valid_port(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|p| *p != 0)
}

/// IANA_SVC_NAME: 1-15 chars, lower-case letters, digits and '-', at least
/// one letter, no leading, trailing or doubled '-'.
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// Validates a selector's structure and keys as the API server does and
/// converts it. Values are taken as they are (see the module
/// documentation). `None` (an absent selector) selects everything.
fn parse_selector(sel: Option<&LabelSelector>) -> Result<LabelSel, FieldError> {
    let Some(sel) = sel else {
        return Ok(LabelSel::everything());
    };
    for k in sel.match_labels.iter().flatten().map(|(k, _)| k) {
        if !is_label_key(k) {
            return Err(field_err(
                format!(".matchLabels[{k}]"),
                format!("invalid label key {k:?}"),
            ));
        }
    }
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        let field = format!(".matchExpressions[{i}]");
        if !is_label_key(&req.key) {
            return Err(field_err(
                format!("{field}.key"),
                format!("invalid label key {:?}", req.key),
            ));
        }
        let values = req.values.as_deref().unwrap_or_default();
        match req.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(field_err(
                    format!("{field}.values"),
                    format!("must be non-empty for operator {}", req.operator),
                ));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(field_err(
                    format!("{field}.values"),
                    format!("must be empty for operator {}", req.operator),
                ));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(field_err(
                    format!("{field}.operator"),
                    format!("unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"),
                ));
            }
        }
    }
    let selector = Selector::try_from(sel.clone())
        .map_err(|e| field_err("", format!("invalid selector: {}", e.0)))?;
    Ok(LabelSel::new(selector.into_iter().collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_follow_iana_rules() {
        assert!(is_port_name("http"));
        assert!(is_port_name("serve-80-tcp"));
        assert!(!is_port_name("80"));
        assert!(!is_port_name("-http"));
        assert!(!is_port_name("ht--tp"));
        assert!(!is_port_name("HTTP"));
        assert!(!is_port_name("a-very-long-port-name"));
    }

    #[test]
    fn label_keys_may_have_a_dns_prefix() {
        assert!(is_label_key("kubernetes.io/metadata.name"));
        assert!(is_label_key("app"));
        assert!(!is_label_key("bad key"));
        assert!(!is_label_key("/app"));
        assert!(!is_label_key("Example.COM/app"));
    }

    #[test]
    fn cidr_host_bits_are_masked_like_go() {
        assert_eq!(
            parse_cidr("10.1.2.3/16").unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert!(parse_cidr("10.1.2.3").is_none());
        assert!(parse_cidr("300.1.2.3/8").is_none());
    }

    #[test]
    fn a_policy_object_keeps_its_identity_and_its_validation() {
        let np: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "x", "name": "p", "uid": "u", "generation": 3,
                         "resourceVersion": "7"},
            "spec": {
                "podSelector": {"matchLabels": {}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{}, {"from": [], "ports": [{"port": "http"}, {"port": 80, "endPort": 90, "protocol": "UDP"}]}],
                "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
                                   {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]},
                                    "podSelector": {"matchLabels": {"app": "web"}}}]},
                           {"to": [{"ipBlock": {"cidr": "nonsense"}}]}]
            }
        }))
        .unwrap();
        let obj = PolicyObject::new(&np);
        assert_eq!(obj.key(), &ObjectKey::new("x", "p"));
        assert_eq!((obj.uid(), obj.generation()), (Some("u"), Some(3)));
        let mut diags = Vec::new();
        assert_eq!(obj.policy(), parse_policy(&np, &mut diags).as_ref());
        assert_eq!(obj.diagnostics(), diags);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(diags[0].field, "spec.egress[1].to[0].ipBlock.cidr");
        let reference = obj.object_ref();
        assert_eq!(reference, np.object_ref(&()));
        assert_eq!(reference.kind.as_deref(), Some("NetworkPolicy"));
        assert_eq!(reference.uid.as_deref(), Some("u"));

        let mut annotated = np.clone();
        annotated.metadata.annotations = Some([("a".to_string(), "b".to_string())].into());
        assert_eq!(
            PolicyObject::new(&annotated),
            obj,
            "annotations are dropped"
        );
        let nameless = PolicyObject::new(&NetworkPolicy::default());
        assert_eq!(nameless.key(), &ObjectKey::new("default", ""));
        assert!(nameless.policy().is_none());
        assert_eq!(nameless.diagnostics()[0].field, "metadata.name");
        assert_eq!(
            nameless.object_ref(),
            NetworkPolicy::default().object_ref(&())
        );
    }

    #[test]
    fn policies_parsed_through_one_interner_share_equal_selectors() {
        let np = |name: &str| -> NetworkPolicy {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "x", "name": name},
                "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}
            }))
            .unwrap()
        };
        let mut interner = Interner::default();
        let (a, b) = (
            PolicyObject::new_in(&np("a"), &mut interner),
            PolicyObject::new_in(&np("b"), &mut interner),
        );
        let (a, b) = (a.policy().unwrap(), b.policy().unwrap());
        assert!(a.pod_selector.is_shared_with(&b.pod_selector));
        let peer = |p: &Policy| match &p.ingress.as_ref().unwrap()[0].peers.as_ref().unwrap()[0] {
            crate::compiler::Peer::Pods { pods, .. } => pods.clone(),
            other => panic!("{other:?}"),
        };
        assert!(peer(a).is_shared_with(&peer(b)));
        assert!(!peer(a).is_shared_with(&a.pod_selector));
        let alone = PolicyObject::new(&np("c"));
        assert!(
            !alone
                .policy()
                .unwrap()
                .pod_selector
                .is_shared_with(&a.pod_selector)
        );
        assert_eq!(alone.policy().unwrap().pod_selector, a.pod_selector);
    }
}
