//! Case files (`../shared/conformance-case-format.md`, v1): parsing,
//! checking against the model, `{{ip ...}}` / `{{net ...}}` placeholders,
//! and the expected truth table of a probe.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use ipnet::Ipv4Net;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use super::model;
use crate::lab::Port;
use nftpol::compiler::Protocol;

/// One case file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    pub steps: Vec<Step>,
    /// Where it was read from (not in the file).
    #[serde(skip)]
    pub path: PathBuf,
}

/// One step; its parts are done in the order of the fields.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    /// Namespace → its new labels (they replace the old ones;
    /// `kubernetes.io/metadata.name` stays).
    #[serde(default)]
    pub label_namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// `ns/pod` → its new labels (they replace the old ones).
    #[serde(default)]
    pub label_pods: BTreeMap<String, BTreeMap<String, String>>,
    /// NetworkPolicies to delete, as `ns/name`.
    #[serde(default)]
    pub delete: Vec<String>,
    /// NetworkPolicies to create or replace (whole objects).
    #[serde(default)]
    pub apply: Vec<Value>,
    #[serde(default)]
    pub probes: Vec<ProbeSpec>,
}

/// Connect from every pod to every other on one port.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSpec {
    pub port: u16,
    pub protocol: String,
    #[serde(default)]
    pub expect: Vec<Rule>,
}

/// "Connections from `from` to `to` are `allowed`"; a later rule wins.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub from: String,
    pub to: String,
    pub allowed: bool,
}

/// `(from, to) → allowed` over every ordered pair of distinct pods.
pub type Matrix = crate::lab::Reachability;

impl ProbeSpec {
    /// The port to probe.
    pub fn port(&self) -> Result<Port, String> {
        let proto = Protocol::parse(&self.protocol).ok_or_else(|| {
            format!(
                "probe protocol {:?}: must be TCP, UDP or SCTP",
                self.protocol
            )
        })?;
        Ok(Port {
            proto,
            port: self.port,
        })
    }

    /// The expected truth table: all allowed, then the rules in order.
    pub fn expected(&self, pods: &[String]) -> Matrix {
        let mut m = Matrix::new();
        for from in pods {
            for to in pods {
                if from == to {
                    continue;
                }
                let allowed = self
                    .expect
                    .iter()
                    .rev()
                    .find(|r| matches(&r.from, from) && matches(&r.to, to))
                    .is_none_or(|r| r.allowed);
                m.insert((from.clone(), to.clone()), allowed);
            }
        }
        m
    }
}

/// Whether a pattern (`ns/pod`, `ns/*`, `*/pod`, `*`) matches `ns/pod`.
pub fn matches(pattern: &str, pod: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let (Some((pn, pp)), Some((n, p))) = (pattern.split_once('/'), pod.split_once('/')) else {
        return false;
    };
    (pn == "*" || pn == n) && (pp == "*" || pp == p)
}

/// Reads every case in `paths` (files, or directories of `*.yaml`/`*.yml`,
/// sorted by name). A file that cannot be read or is not a valid case
/// comes back as an error of its own, so the rest still run.
pub fn load_all(paths: &[PathBuf]) -> Vec<Result<Case, (PathBuf, String)>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            match std::fs::read_dir(p) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .flatten()
                        .map(|e| e.path())
                        .filter(|f| {
                            f.is_file()
                                && matches!(
                                    f.extension().and_then(|e| e.to_str()),
                                    Some("yaml" | "yml")
                                )
                        })
                        .collect();
                    found.sort();
                    files.extend(found);
                }
                Err(e) => files.push(p.join(format!("<unreadable: {e}>"))),
            }
        } else {
            files.push(p.clone());
        }
    }
    files.into_iter().map(|f| load(&f)).collect()
}

/// Reads and checks one case file.
pub fn load(path: &Path) -> Result<Case, (PathBuf, String)> {
    let fail = |msg: String| (path.to_path_buf(), msg);
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let mut case: Case = serde_saphyr::from_str_with_options(&text, nftpol::load::yaml_options())
        .map_err(|e| fail(e.to_string()))?;
    case.path = path.to_path_buf();
    case.check().map_err(fail)?;
    Ok(case)
}

impl Case {
    /// Everything the format fixes: known namespaces and pods, pattern
    /// syntax, protocols, objects with a namespace and a name.
    fn check(&self) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err("a case needs at least one step".into());
        }
        for (i, step) in self.steps.iter().enumerate() {
            let at = |msg: String| format!("step {}: {msg}", i + 1);
            for ns in step.label_namespaces.keys() {
                if !model::NAMESPACES.contains(&ns.as_str()) {
                    return Err(at(format!("labelNamespaces: no namespace {ns:?}")));
                }
            }
            for pod in step.label_pods.keys() {
                model::pod_ip(pod).ok_or_else(|| at(format!("labelPods: no pod {pod:?}")))?;
            }
            for d in &step.delete {
                if d.split_once('/')
                    .is_none_or(|(n, p)| n.is_empty() || p.is_empty())
                {
                    return Err(at(format!("delete: {d:?} is not namespace/name")));
                }
            }
            for (j, obj) in step.apply.iter().enumerate() {
                for field in ["/metadata/name", "/metadata/namespace"] {
                    if obj.pointer(field).and_then(Value::as_str).is_none() {
                        return Err(at(format!("apply[{j}]: {field} is missing")));
                    }
                }
                if obj.get("kind").and_then(Value::as_str) != Some("NetworkPolicy") {
                    return Err(at(format!("apply[{j}]: kind must be NetworkPolicy")));
                }
                substitute(obj).map_err(|e| at(format!("apply[{j}]: {e}")))?;
            }
            for (j, probe) in step.probes.iter().enumerate() {
                probe.port().map_err(|e| at(format!("probes[{j}]: {e}")))?;
                for r in &probe.expect {
                    for pat in [&r.from, &r.to] {
                        if !valid_pattern(pat) {
                            return Err(at(format!(
                                "probes[{j}]: pattern {pat:?} names no pod of the model"
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn valid_pattern(p: &str) -> bool {
    if p == "*" {
        return true;
    }
    let Some((ns, pod)) = p.split_once('/') else {
        return false;
    };
    (ns == "*" || model::NAMESPACES.contains(&ns)) && (pod == "*" || model::PODS.contains(&pod))
}

static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\{\{\s*(\w+)\s+([^\s}]+)(?:\s+([^\s}]+))?\s*\}\}").expect("a valid regex")
});

/// The object with every `{{ip ns/pod}}` and `{{net ns/pod LEN}}` in its
/// strings replaced by the model's addresses.
pub fn substitute(obj: &Value) -> Result<Value, String> {
    Ok(match obj {
        Value::String(s) => Value::String(substitute_str(s)?),
        Value::Array(items) => {
            Value::Array(items.iter().map(substitute).collect::<Result<_, _>>()?)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), substitute(v)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn substitute_str(s: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut last = 0;
    for c in PLACEHOLDER.captures_iter(s) {
        let whole = c.get(0).expect("group 0 always matches");
        out.push_str(&s[last..whole.start()]);
        last = whole.end();
        let pod = &c[2];
        let ip: Ipv4Addr = model::pod_ip(pod)
            .ok_or_else(|| format!("{}: no pod {pod:?} in the model", whole.as_str()))?;
        match (&c[1], c.get(3)) {
            ("ip", None) => out.push_str(&ip.to_string()),
            ("net", Some(len)) => {
                let len: u8 = len
                    .as_str()
                    .parse()
                    .ok()
                    .filter(|l| *l <= 32)
                    .ok_or_else(|| format!("{}: bad prefix length", whole.as_str()))?;
                let net = Ipv4Net::new(ip, len).expect("checked above").trunc();
                out.push_str(&net.to_string());
            }
            _ => return Err(format!("unknown placeholder {}", whole.as_str())),
        }
    }
    out.push_str(&s[last..]);
    if out.contains("{{") {
        return Err(format!("unknown placeholder in {s:?}"));
    }
    Ok(out)
}

/// The expected and observed truth tables side by side (`.` allowed, `X`
/// denied, `-` self), then the differing pairs.
pub fn render_difference(title: &str, pods: &[String], want: &Matrix, got: &Matrix) -> String {
    let cell = |m: &Matrix, f: &String, t: &String| match m.get(&(f.clone(), t.clone())) {
        None => "-",
        Some(true) => ".",
        Some(false) => "X",
    };
    let corner = "from\\to";
    // Row labels as wide as the corner; cells as wide as a pod name.
    let cw = pods.iter().map(String::len).max().unwrap_or(1);
    let lw = cw.max(corner.len());
    let header: String = pods.iter().map(|p| format!(" {p:>cw$}")).collect();
    let width = lw + header.len();
    let mut s = format!(
        "  {title}\n  {:<width$}   {}\n  {corner:<lw$}{header}   {corner:<lw$}{header}\n",
        "expected", "observed"
    );
    for f in pods {
        let row = |m: &Matrix| -> String {
            pods.iter()
                .map(|t| format!(" {:>cw$}", cell(m, f, t)))
                .collect()
        };
        s.push_str(&format!("  {f:<lw$}{}   {f:<lw$}{}\n", row(want), row(got)));
    }
    let wrong: Vec<String> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .map(|((f, t), v)| {
            format!(
                "{f} -> {t}: expected {}",
                if *v { "allowed" } else { "denied" }
            )
        })
        .collect();
    s.push_str(&format!(
        "  {} of {} pairs differ: {}\n",
        wrong.len(),
        want.len(),
        wrong.join("; ")
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<String> {
        model::pod_keys()
    }

    #[test]
    fn patterns_match_namespace_pod_and_wildcards() {
        assert!(matches("*", "x/a"));
        assert!(matches("x/*", "x/a"));
        assert!(!matches("x/*", "y/a"));
        assert!(matches("*/a", "z/a"));
        assert!(!matches("*/a", "z/b"));
        assert!(matches("y/b", "y/b"));
        assert!(!matches("y/b", "y/c"));
    }

    #[test]
    fn a_later_rule_wins_and_self_pairs_are_left_out() {
        let probe = ProbeSpec {
            port: 80,
            protocol: "TCP".into(),
            expect: vec![
                Rule {
                    from: "*".into(),
                    to: "x/*".into(),
                    allowed: false,
                },
                Rule {
                    from: "x/*".into(),
                    to: "x/a".into(),
                    allowed: true,
                },
            ],
        };
        let m = probe.expected(&pods());
        assert_eq!(m.len(), 72);
        assert!(!m[&("y/a".into(), "x/a".into())]);
        assert!(m[&("x/b".into(), "x/a".into())]);
        assert!(!m[&("x/a".into(), "x/b".into())]);
        assert!(m[&("x/a".into(), "y/b".into())]);
        assert!(!m.contains_key(&("x/a".into(), "x/a".into())));
    }

    #[test]
    fn placeholders_become_model_addresses() {
        let ip = model::pod_ip("x/b").unwrap();
        let v = serde_json::json!({"cidr": "{{ip x/b}}/32", "except": ["{{net x/b 24}}", "{{ net y/a 4 }}"]});
        let out = substitute(&v).unwrap();
        assert_eq!(out["cidr"], format!("{ip}/32"));
        let o = ip.octets();
        assert_eq!(out["except"][0], format!("{}.{}.{}.0/24", o[0], o[1], o[2]));
        assert_eq!(out["except"][1], "0.0.0.0/4");
        assert!(substitute(&serde_json::json!("{{ip q/a}}")).is_err());
        assert!(substitute(&serde_json::json!("{{mac x/a}}")).is_err());
        assert!(substitute(&serde_json::json!("{{net x/a 33}}")).is_err());
    }

    #[test]
    fn the_shared_samples_load() {
        let dir = crate::fixtures::repo_path("../shared/conformance-samples");
        if !dir.is_dir() {
            eprintln!("skipped: {} is not here", dir.display());
            return;
        }
        for case in load_all(&[dir]) {
            match case {
                Ok(case) => assert!(!case.steps.is_empty()),
                // Format v2 (ClusterNetworkPolicy objects, IPv6 probes) is
                // not read yet: such a case must be refused, never misread.
                Err((p, e)) => {
                    let text = std::fs::read_to_string(&p).unwrap();
                    let v2 = text.contains("kind: ClusterNetworkPolicy")
                        || text.contains("family: IPv6");
                    assert!(v2, "{}: {e}", p.display());
                    eprintln!("refused (format v2): {}: {e}", p.display());
                }
            }
        }
    }

    #[test]
    fn a_typo_is_an_error_not_a_silent_expectation() {
        let dir = std::env::temp_dir().join(format!("nftpol-case-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = [
            (
                "pattern.yaml",
                "name: t\nsteps:\n  - probes:\n      - {port: 80, protocol: TCP, expect: [{from: \"x/d\", to: \"*\", allowed: false}]}\n",
            ),
            (
                "key.yaml",
                "name: t\nsteps:\n  - labelPod: {x/a: {pod: a}}\n",
            ),
            (
                "proto.yaml",
                "name: t\nsteps:\n  - probes: [{port: 80, protocol: ICMP}]\n",
            ),
        ];
        for (file, text) in bad {
            let p = dir.join(file);
            std::fs::write(&p, text).unwrap();
            assert!(load(&p).is_err(), "{file} should not load");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
