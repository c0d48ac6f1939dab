//! The conformance runner: plays case files (the format of
//! `../shared/conformance-case-format.md`) on a two-node Flannel cluster in
//! network namespaces ([`crate::lab::Cluster`]) with the real `nftpol run`
//! on each node, and compares real connections with the expectations.
//!
//! Per case: back to the defaults (no policies, default labels), then per
//! step: the API writes (labels, deletes, applies) → wait until every
//! node's controller reports those resourceVersions enforced (`/status`,
//! per kind; never a fixed sleep) → `conntrack -F` in the nodes → all
//! probes of the step at once (72 pairs each) → compare.

pub mod case;
pub mod model;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod as ApiPod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use nftpol::watch::{NAMESPACES, PODS, POLICIES};
use serde_json::Value;

use crate::lab::{Cluster, ClusterSpec, DEFAULT_TIMEOUT, Nftpol, Port};
use case::{Case, Matrix, Step};

/// How long one step may take to be enforced before the case fails.
const ENFORCE_TIMEOUT: Duration = Duration::from_secs(20);

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Case files or directories.
    pub cases: Vec<PathBuf>,
    /// Only cases whose name or file name contains this text.
    pub filter: Option<String>,
    /// The nftpol binary the node controllers run.
    pub binary: Nftpol,
    /// Connection timeout of one probe.
    pub probe_timeout: Duration,
}

/// The tally.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    /// Names of the failed cases.
    pub failures: Vec<String>,
}

/// Runs the cases, printing `PASS name` / `FAIL name` (with the differing
/// truth tables) as it goes and `N passed, N failed` at the end.
pub fn run(opts: &Options, out: &mut dyn Write) -> anyhow::Result<Summary> {
    let loaded = case::load_all(&opts.cases);
    let selected: Vec<_> = loaded
        .into_iter()
        .filter(|c| match (&opts.filter, c) {
            (None, _) => true,
            (Some(f), Ok(case)) => case.name.contains(f) || case.path.to_string_lossy().contains(f),
            (Some(f), Err((path, _))) => path.to_string_lossy().contains(f),
        })
        .collect();
    anyhow::ensure!(!selected.is_empty(), "no cases to run in {:?}", opts.cases);

    let started = Instant::now();
    let spec = ClusterSpec::new(
        opts.binary.clone(),
        &model::NODES,
        model::namespaces(),
        model::pods(),
    );
    let cluster = Cluster::start(spec, Duration::from_secs(60))?;
    writeln!(
        out,
        "cluster up in {:.1} s: {} nodes, {} pods, {} cases",
        started.elapsed().as_secs_f64(),
        cluster.nodes().len(),
        cluster.pods().len(),
        selected.len()
    )?;
    let runner = Runner {
        cluster: &cluster,
        pods: model::pod_keys(),
        probe_timeout: opts.probe_timeout,
    };
    let mut summary = Summary::default();
    for c in selected {
        let (name, result) = match c {
            Ok(case) => (case.name.clone(), runner.play(&case)),
            Err((path, e)) => (
                path.display().to_string(),
                Err(format!("  invalid case: {e}\n")),
            ),
        };
        match result {
            Ok(note) => {
                summary.passed += 1;
                writeln!(out, "PASS {name}{note}")?;
            }
            Err(report) => {
                summary.failed += 1;
                summary.failures.push(name.clone());
                write!(out, "FAIL {name}\n{report}")?;
            }
        }
        out.flush()?;
    }
    writeln!(out, "suite took {:.1} s", started.elapsed().as_secs_f64())?;
    writeln!(out, "{} passed, {} failed", summary.passed, summary.failed)?;
    Ok(summary)
}

struct Runner<'a> {
    cluster: &'a Cluster,
    pods: Vec<String>,
    probe_timeout: Duration,
}

/// resourceVersions written, per kind (the controllers' `/status` keys).
type Written = BTreeMap<&'static str, u64>;

fn note(written: &mut Written, kind: &'static str, rv: u64) {
    let e = written.entry(kind).or_default();
    *e = (*e).max(rv);
}

fn rv_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl Runner<'_> {
    /// Plays one case; Ok with a remark (empty or " (…)"), or Err with the
    /// failure report.
    fn play(&self, case: &Case) -> Result<String, String> {
        self.reset()
            .map_err(|e| format!("  resetting the cluster: {e}\n"))?;
        let mut remarks = Vec::new();
        for (i, step) in case.steps.iter().enumerate() {
            let at = |e: String| format!("  step {}: {e}\n", i + 1);
            let written = self.write_step(step).map_err(at)?;
            self.enforced(&written).map_err(at)?;
            if step.probes.is_empty() {
                continue;
            }
            let ports: Vec<Port> = step
                .probes
                .iter()
                .map(|p| p.port())
                .collect::<Result<_, _>>()
                .map_err(at)?;
            let want: Vec<Matrix> = step.probes.iter().map(|p| p.expected(&self.pods)).collect();
            let mut got = self.probe(&ports).map_err(at)?;
            if got != want {
                // As upstream does: one more look before calling it a failure.
                got = self.probe(&ports).map_err(at)?;
                if got == want {
                    remarks.push(format!("step {} matched on the second probe", i + 1));
                }
            }
            if got != want {
                let mut report = String::new();
                for ((port, w), g) in ports.iter().zip(&want).zip(&got) {
                    if w != g {
                        let title = format!("step {}: probe {port}", i + 1);
                        report.push_str(&case::render_difference(&title, &self.pods, w, g));
                    }
                }
                return Err(report);
            }
        }
        Ok(if remarks.is_empty() {
            String::new()
        } else {
            format!(" ({})", remarks.join("; "))
        })
    }

    fn probe(&self, ports: &[Port]) -> Result<Vec<Matrix>, String> {
        self.cluster
            .probe_matrix(ports, self.probe_timeout)
            .map_err(|e| format!("probing: {e}"))
    }

    /// Waits until both controllers enforce `written`, then forgets old flows.
    fn enforced(&self, written: &Written) -> Result<(), String> {
        self.cluster.wait_enforced(written, ENFORCE_TIMEOUT)?;
        self.cluster
            .conntrack_flush()
            .map_err(|e| format!("conntrack -F: {e}"))
    }

    /// Back to the model's defaults: no policies anywhere, default labels.
    fn reset(&self) -> Result<(), String> {
        let c = self.cluster;
        let api_err = |what: &str, e: kube::Error| format!("{what}: {e}");
        let mut written = Written::new();
        let all: Api<NetworkPolicy> = Api::all(c.client());
        let existing = c
            .block_on(all.list(&ListParams::default()))
            .map_err(|e| api_err("listing policies", e))?;
        for p in existing {
            let (ns, name) = (
                p.metadata.namespace.unwrap_or_default(),
                p.metadata.name.unwrap_or_default(),
            );
            let api: Api<NetworkPolicy> = Api::namespaced(c.client(), &ns);
            c.block_on(api.delete(&name, &DeleteParams::default()))
                .map_err(|e| api_err(&format!("deleting {ns}/{name}"), e))?;
            note(&mut written, POLICIES, c.resource_version());
        }
        for ns in model::NAMESPACES {
            if let Some(rv) = self.set_namespace_labels(ns, &model::namespace_labels(ns), true)? {
                note(&mut written, NAMESPACES, rv);
            }
        }
        for key in &self.pods {
            let pod = key.split_once('/').map(|(_, p)| p).unwrap_or_default();
            if let Some(rv) = self.set_pod_labels(key, &model::pod_labels(pod), true)? {
                note(&mut written, PODS, rv);
            }
        }
        self.enforced(&written)
    }

    /// The step's API writes, in the format's order.
    fn write_step(&self, step: &Step) -> Result<Written, String> {
        let c = self.cluster;
        let mut written = Written::new();
        for (ns, labels) in &step.label_namespaces {
            let mut labels = labels.clone();
            labels.insert(model::NAMESPACE_NAME_LABEL.into(), ns.clone());
            if let Some(rv) = self.set_namespace_labels(ns, &labels, false)? {
                note(&mut written, NAMESPACES, rv);
            }
        }
        for (key, labels) in &step.label_pods {
            if let Some(rv) = self.set_pod_labels(key, labels, false)? {
                note(&mut written, PODS, rv);
            }
        }
        for key in &step.delete {
            let (ns, name) = key.split_once('/').expect("checked when loaded");
            let api: Api<NetworkPolicy> = Api::namespaced(c.client(), ns);
            c.block_on(api.delete(name, &DeleteParams::default()))
                .map_err(|e| format!("deleting policy {key}: {e}"))?;
            note(&mut written, POLICIES, c.resource_version());
        }
        for obj in &step.apply {
            let rv = self.apply_policy(obj)?;
            note(&mut written, POLICIES, rv);
        }
        Ok(written)
    }

    /// Creates the policy, or replaces the one of that name.
    fn apply_policy(&self, obj: &Value) -> Result<u64, String> {
        let c = self.cluster;
        let obj = case::substitute(obj)?;
        let mut policy: NetworkPolicy =
            serde_json::from_value(obj).map_err(|e| format!("not a NetworkPolicy: {e}"))?;
        let ns = policy.metadata.namespace.clone().unwrap_or_default();
        let name = policy.metadata.name.clone().unwrap_or_default();
        let api: Api<NetworkPolicy> = Api::namespaced(c.client(), &ns);
        let pp = PostParams::default();
        let result = match c
            .block_on(api.get_opt(&name))
            .map_err(|e| format!("reading policy {ns}/{name}: {e}"))?
        {
            Some(old) => {
                policy.metadata.resource_version = old.metadata.resource_version;
                c.block_on(api.replace(&name, &pp, &policy))
            }
            None => c.block_on(api.create(&pp, &policy)),
        };
        let saved = result.map_err(|e| format!("applying policy {ns}/{name}: {e}"))?;
        Ok(rv_of(&saved.metadata))
    }

    /// Replaces a namespace's labels; `None` when they were already so.
    fn set_namespace_labels(
        &self,
        ns: &str,
        labels: &BTreeMap<String, String>,
        only_if_changed: bool,
    ) -> Result<Option<u64>, String> {
        let api: Api<Namespace> = Api::all(self.cluster.client());
        self.set_labels(api, ns, &format!("namespace {ns}"), labels, only_if_changed)
    }

    /// Replaces a pod's labels; `None` when they were already so.
    fn set_pod_labels(
        &self,
        key: &str,
        labels: &BTreeMap<String, String>,
        only_if_changed: bool,
    ) -> Result<Option<u64>, String> {
        let (ns, name) = key.split_once('/').expect("checked when loaded");
        let api: Api<ApiPod> = Api::namespaced(self.cluster.client(), ns);
        self.set_labels(api, name, &format!("pod {key}"), labels, only_if_changed)
    }

    /// Reads the object, replaces its labels, writes it back; returns the
    /// write's resourceVersion, or `None` when nothing had to change.
    fn set_labels<K>(
        &self,
        api: Api<K>,
        name: &str,
        what: &str,
        labels: &BTreeMap<String, String>,
        only_if_changed: bool,
    ) -> Result<Option<u64>, String>
    where
        K: kube::Resource
            + Clone
            + std::fmt::Debug
            + serde::Serialize
            + serde::de::DeserializeOwned,
    {
        let c = self.cluster;
        let mut obj = c
            .block_on(api.get(name))
            .map_err(|e| format!("reading {what}: {e}"))?;
        if only_if_changed && obj.meta().labels.as_ref() == Some(labels) {
            return Ok(None);
        }
        obj.meta_mut().labels = Some(labels.clone());
        let saved = c
            .block_on(api.replace(name, &PostParams::default(), &obj))
            .map_err(|e| format!("labelling {what}: {e}"))?;
        Ok(Some(rv_of(saved.meta())))
    }
}

/// The runner's defaults: the shipped cases, the 0.3 s probe timeout.
pub fn default_options(binary: impl Into<Nftpol>) -> Options {
    Options {
        cases: vec![crate::fixtures::repo_path("conformance/cases")],
        filter: None,
        binary: binary.into(),
        probe_timeout: DEFAULT_TIMEOUT,
    }
}
