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
use std::sync::{Arc, LazyLock};

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::{Expression, Selector};
use regex::Regex;

use super::snapshot::{Interner, LabelLookup, ObjectKey, Protocol};

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

/// A validated label selector with a canonical text form (used to share sets
/// between identical selectors).
///
/// Cheap to clone: the parsed form is shared, and the policies kept by the
/// controller share one copy of each distinct selector (an
/// [`Interner`](super::snapshot::Interner) hands it out by its text).
#[derive(Clone)]
pub struct LabelSel(Arc<SelectorParts>);

struct SelectorParts {
    /// kube's parsed selector, as a list: its own `matches` reads only a
    /// `BTreeMap<String, String>`, and pods keep their labels in a more
    /// compact form ([`PodLabels`](super::snapshot::PodLabels)).
    exprs: Vec<Expression>,
    canonical: String,
}

static EVERYTHING: LazyLock<LabelSel> = LazyLock::new(|| LabelSel::new(Vec::new()));

impl LabelSel {
    fn new(exprs: Vec<Expression>) -> Self {
        Self(Arc::new(SelectorParts {
            canonical: canonical(&exprs),
            exprs,
        }))
    }

    pub fn everything() -> Self {
        EVERYTHING.clone()
    }

    /// Whether labels match, as kube's `Selector::matches` decides it.
    pub fn matches(&self, labels: &impl LabelLookup) -> bool {
        self.0.exprs.iter().all(|e| match e {
            Expression::In(key, values) => labels.label(key).is_some_and(|v| values.contains(v)),
            Expression::NotIn(key, values) => labels.label(key).is_none_or(|v| !values.contains(v)),
            Expression::Exists(key) => labels.label(key).is_some(),
            Expression::DoesNotExist(key) => labels.label(key).is_none(),
            Expression::Equal(key, value) => labels.label(key) == Some(value.as_str()),
            Expression::NotEqual(key, value) => labels.label(key) != Some(value.as_str()),
        })
    }

    pub fn selects_all(&self) -> bool {
        self.0.exprs.is_empty()
    }

    /// Canonical text, e.g. `app=web,tier in (a,b)`; empty for "everything".
    /// Two selectors with the same text select alike: a value that is not
    /// plain label syntax is written as a JSON string (`app="a,b"`), so
    /// that no value can pass for a list of them.
    pub fn canonical(&self) -> &str {
        &self.0.canonical
    }

    /// Whether two selectors are one shared copy.
    pub fn is_shared_with(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// How many holders share this copy.
    pub(super) fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

/// Selectors are equal when their canonical texts are (which determine
/// what they select).
impl PartialEq for LabelSel {
    fn eq(&self, other: &Self) -> bool {
        self.canonical() == other.canonical()
    }
}

impl Eq for LabelSel {}

/// Hashes as its canonical text, which it borrows as.
impl std::hash::Hash for LabelSel {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.canonical().hash(h)
    }
}

impl std::borrow::Borrow<str> for LabelSel {
    fn borrow(&self) -> &str {
        self.canonical()
    }
}

impl fmt::Debug for LabelSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabelSel")
            .field("exprs", &self.0.exprs)
            .field("canonical", &self.0.canonical)
            .finish()
    }
}

impl fmt::Display for LabelSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.canonical().is_empty() {
            f.write_str("{}")
        } else {
            f.write_str(self.canonical())
        }
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

static NAME_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$").unwrap());
static DNS1123_SUBDOMAIN_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").unwrap()
});

/// A label key: `[prefix/]name`.
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok =
        prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && DNS1123_SUBDOMAIN_RE.is_match(p));
    prefix_ok && !name.is_empty() && name.len() <= 63 && NAME_RE.is_match(name)
}

fn is_label_value(v: &str) -> bool {
    v.is_empty() || (v.len() <= 63 && NAME_RE.is_match(v))
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

/// The text of a selector (kube's, with unusual values quoted).
fn canonical(exprs: &[Expression]) -> String {
    let value = |v: &str| {
        if is_label_value(v) {
            v.to_string()
        } else {
            serde_json::to_string(v).expect("a string serializes")
        }
    };
    let list = |vs: &std::collections::BTreeSet<String>| {
        vs.iter().map(|v| value(v)).collect::<Vec<_>>().join(",")
    };
    let parts: Vec<String> = exprs
        .iter()
        .map(|e| match e {
            Expression::In(k, vs) => format!("{k} in ({})", list(vs)),
            Expression::NotIn(k, vs) => format!("{k} notin ({})", list(vs)),
            Expression::Equal(k, v) => format!("{k}={}", value(v)),
            Expression::NotEqual(k, v) => format!("{k}!={}", value(v)),
            Expression::Exists(k) => k.clone(),
            Expression::DoesNotExist(k) => format!("!{k}"),
        })
        .collect();
    parts.join(",")
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
}
