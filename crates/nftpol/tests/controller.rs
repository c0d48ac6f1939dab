//! The real controller (`nftpol run`, the binary) against the development
//! API server, on a lab node that reaches the server over its own network.
//! Root only: each test prints why and returns when it cannot run.
//!
//! ```text
//!  test process                    LAN namespace                 node-1 namespace
//!  devserver ── 127.0.0.1:PORT     lan0 192.168.56.1/24          eth0 192.168.56.11
//!     (kube-rs client, kubectl)    devserver listener :PORT ───► nftpol run (metrics :9798)
//!               └── same Store ──► 192.168.56.1:PORT              cni0 10.244.1.1/24 ── pods
//! ```
//!
//! "Enforced" is never a sleep: after an API write the test takes the
//! write's resourceVersion and polls the controller's `/status` (over the
//! LAN) until `synced_resource_version` reaches it, then flushes conntrack
//! and probes.
//!
//! Not here: "an invalid policy gets one event per generation". The
//! devserver validates NetworkPolicies with nftpol's own validator and
//! rejects every policy nftpol would report (422), and nftpol reports no
//! diagnostic for a policy the API server accepts, so no invalid policy can
//! reach the controller through the API.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{PodExt, lab_ready, mk_pod, mk_policy, pod_object};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod as ApiPod;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nftpol::compiler::Protocol;
use nftpol_lab::devserver::{self, Config, DevServer, Handle, Store};
use nftpol_lab::lab::{
    self, Controller, ControllerConfig, DEFAULT_TIMEOUT, Lan, Node, NodeConfig, Pod, Port, Probe,
};
use serde_json::{Value, json};

const NODE: &str = "node-1";
const NS: &str = "default";
/// Every lab pod serves these.
const PORTS: [Port; 2] = [Port::tcp(80), Port::tcp(81)];
const HTTP: Port = Port::tcp(80);
/// How long a change may take to be reported enforced (generous: the
/// machine may be busy with other test binaries).
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
const RESYNC: Duration = Duration::from_secs(2);

/// A temporary file or directory, removed on drop.
struct TempPath(PathBuf);

impl TempPath {
    fn new(what: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        Self(std::env::temp_dir().join(format!(
            "nftpol-controller-test-{}-{}-{what}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )))
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rv_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|s| s.parse().ok())
        .expect("a write returns a numeric resourceVersion")
}

/// The Pod object of a pod on the node serving [`PORTS`] by name (`http`,
/// `alt`): running at `ip`, or, without one, scheduled and not started.
fn api_pod(name: &str, labels: &[(&str, &str)], ip: Option<Ipv4Addr>) -> ApiPod {
    let pod = |ip: Ipv4Addr| {
        mk_pod(NS, name, NODE, &ip.to_string(), labels)
            .named_port("http", Protocol::Tcp, PORTS[0].port)
            .named_port("alt", Protocol::Tcp, PORTS[1].port)
    };
    let pod = match ip {
        Some(ip) => pod(ip),
        None => pod(Ipv4Addr::UNSPECIFIED).no_ip().phase("Pending"),
    };
    serde_json::from_value(pod_object(&pod)).expect("a valid Pod")
}

/// Pods labelled `app: target` accept only pods labelled `role: friend`, on
/// the named port `http`.
fn friends_only(target: &str) -> NetworkPolicy {
    mk_policy(
        NS,
        &format!("{target}-friends-only"),
        json!({
            "podSelector": { "matchLabels": { "app": target } },
            "ingress": [{
                "from": [{ "podSelector": { "matchLabels": { "role": "friend" } } }],
                "ports": [{ "port": "http" }],
            }],
        }),
    )
}

/// One node on a LAN, the devserver in the test process (loopback for the
/// test, the LAN for the node), and `nftpol run` in the node.
struct Cluster {
    // Fields drop in order: the controller goes before its node.
    controller: Controller,
    pods: Vec<Pod>,
    node: Node,
    lan: Lan,
    server: Option<Handle>,
    client: kube::Client,
    /// The server's objects; they survive a restart of the server.
    store: Arc<Store>,
    /// The server's port, on 127.0.0.1 and on the LAN address.
    port: u16,
    _node_kubeconfig: TempPath,
    rt: tokio::runtime::Runtime,
}

impl Cluster {
    /// Everything running; the controller has synced once (ready).
    fn new() -> Self {
        Self::with_args(Vec::new())
    }

    /// [`Cluster::new`], with more arguments for `nftpol run`.
    fn with_args(extra_args: Vec<String>) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let lan = Lan::new().expect("create the LAN");
        let node = Node::new(NodeConfig::new(NODE, 1)).expect("create the node");
        let node_ip = node.join_lan(&lan).expect("plug the node into the LAN");
        assert_eq!(node_ip, Ipv4Addr::new(192, 168, 56, 11));

        let mut server = rt
            .block_on(DevServer::start(Config::default()))
            .expect("the devserver starts");
        let port = server.addr.port();
        {
            let _in_rt = rt.enter();
            let lan_addr = server
                .serve_also(lan.listen_tcp(port).expect("listen in the LAN"))
                .expect("serve on the LAN");
            assert_eq!(lan_addr, SocketAddr::from((lan.ipv4(), port)));
        }
        let store = server.store().clone();
        let client = rt.block_on(async { server.client() }).expect("a client");

        let node_kubeconfig = TempPath::new("node-kubeconfig");
        std::fs::write(
            &node_kubeconfig.0,
            devserver::kubeconfig_yaml(&format!("http://{}:{port}", lan.ipv4())),
        )
        .unwrap();
        let controller = Controller::start(
            &node,
            ControllerConfig {
                resync_period: RESYNC,
                extra_args,
                ..ControllerConfig::new(env!("CARGO_BIN_EXE_nftpol"), NODE, &node_kubeconfig.0)
            },
        )
        .expect("start nftpol run");
        let cluster = Self {
            controller,
            pods: Vec::new(),
            node,
            lan,
            server: Some(server),
            client,
            store,
            port,
            _node_kubeconfig: node_kubeconfig,
            rt,
        };
        cluster
            .controller
            .wait_ready(SYNC_TIMEOUT)
            .unwrap_or_else(|e| panic!("the controller never became ready: {e}"));
        cluster
    }

    fn server(&self) -> &Handle {
        self.server.as_ref().expect("the devserver runs")
    }

    fn pods_api(&self) -> Api<ApiPod> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn policies_api(&self) -> Api<NetworkPolicy> {
        Api::namespaced(self.client.clone(), NS)
    }

    /// A lab pod `name` on the node (host number `host`) serving [`PORTS`],
    /// and its Pod object with its IP. Returns the write's resourceVersion.
    fn pod(&mut self, name: &str, host: u8, labels: &[(&str, &str)]) -> u64 {
        let ip = self.lab_pod_only(name, host);
        self.create_pod_object(name, labels, Some(ip))
    }

    /// Only the lab pod (the kernel side); returns its address.
    fn lab_pod_only(&mut self, name: &str, host: u8) -> Ipv4Addr {
        let pod = self.node.add_pod(name, host).expect("create a lab pod");
        pod.serve(&PORTS).expect("start the pod's servers");
        let ip = pod.ipv4();
        self.pods.push(pod);
        ip
    }

    fn create_pod_object(&self, name: &str, labels: &[(&str, &str)], ip: Option<Ipv4Addr>) -> u64 {
        let api = self.pods_api();
        let obj = api_pod(name, labels, ip);
        let created = self
            .rt
            .block_on(api.create(&PostParams::default(), &obj))
            .unwrap_or_else(|e| panic!("create pod {name}: {e}"));
        rv_of(&created.metadata)
    }

    /// Merge-patches the pod's labels.
    fn label_pod(&self, name: &str, labels: Value) -> u64 {
        let api = self.pods_api();
        let patch = json!({ "metadata": { "labels": labels } });
        let patched = self
            .rt
            .block_on(api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)))
            .unwrap_or_else(|e| panic!("label pod {name}: {e}"));
        rv_of(&patched.metadata)
    }

    fn create_policy(&self, p: &NetworkPolicy) -> u64 {
        let api = self.policies_api();
        let created = self
            .rt
            .block_on(api.create(&PostParams::default(), p))
            .unwrap_or_else(|e| panic!("create policy: {e}"));
        rv_of(&created.metadata)
    }

    /// Deletes a policy; returns the deletion's resourceVersion (the
    /// server's, right after: nothing else writes in these tests).
    fn delete_policy(&self, name: &str) -> u64 {
        let api = self.policies_api();
        self.rt
            .block_on(api.delete(name, &DeleteParams::default()))
            .unwrap_or_else(|e| panic!("delete policy {name}: {e}"));
        self.store.resource_version()
    }

    /// Waits until the controller says everything up to `rv` is enforced,
    /// then flushes conntrack so that the next probes meet the new rules.
    fn enforced(&self, rv: u64) {
        self.controller
            .wait_synced(rv, SYNC_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        self.node.conntrack_flush().expect("conntrack -F");
    }

    fn lab_pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name() == name)
            .unwrap_or_else(|| panic!("no lab pod {name}"))
    }

    fn to(&self, name: &str, port: Port) -> SocketAddr {
        SocketAddr::new(self.lab_pod(name).ipv4().into(), port.port)
    }

    /// One fresh connection from `from` to `to` on `port`.
    fn can(&self, from: &str, to: &str, port: Port) -> bool {
        lab::probe(
            self.lab_pod(from).netns(),
            self.to(to, port),
            port.proto,
            DEFAULT_TIMEOUT,
        )
        .expect("probe")
    }

    /// Asserts what `from -> to` on `port` does, with the controller's
    /// status in the message.
    fn expect(&self, from: &str, to: &str, port: Port, allowed: bool, when: &str) {
        let got = self.can(from, to, port);
        if got != allowed {
            panic!(
                "{when}: {from} -> {to} {port} should be {} but is {}; /status: {:?}\n{}",
                verdict(allowed),
                verdict(got),
                self.controller.status(),
                self.controller.log_tail(20)
            );
        }
    }

    /// Stops the API server (every watch ends, the port closes); its
    /// objects stay in [`Cluster::store`].
    fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            self.rt.block_on(server.shutdown());
        }
    }

    /// Starts the API server again with the same objects on the same
    /// addresses: always on 127.0.0.1, on the LAN when `lan`.
    fn start_server(&mut self, lan: bool) {
        assert!(self.server.is_none(), "the server already runs");
        let listeners = if lan {
            vec![self.lan.listen_tcp(self.port).expect("listen in the LAN")]
        } else {
            Vec::new()
        };
        let config = Config {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)),
            ..Config::default()
        };
        let server = self
            .rt
            .block_on(DevServer::start_with(
                config,
                Some(self.store.clone()),
                listeners,
            ))
            .expect("the devserver starts again");
        // A fresh client: no pooled connection to the old server.
        self.client = self.rt.block_on(async { server.client() }).unwrap();
        self.server = Some(server);
    }

    /// `nft list table inet nftpol` in the node, if it exists.
    fn table(&self) -> Option<String> {
        self.node
            .nft()
            .run(&["list", "table", "inet", nftpol::nft::DEFAULT_TABLE], None)
            .ok()
    }
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

/// The usual start: pods a (no role), b (`app: b`), c (`role: friend`) and
/// the policy "b accepts only friends on http": a -> b denied, c -> b allowed.
fn friends_cluster() -> Cluster {
    friends_cluster_with(Cluster::new())
}

fn friends_cluster_with(mut c: Cluster) -> Cluster {
    c.pod("a", 10, &[("app", "a")]);
    c.pod("b", 11, &[("app", "b")]);
    let rv = c.pod("c", 12, &[("app", "c"), ("role", "friend")]);
    c.enforced(rv);
    c.expect("a", "b", HTTP, true, "before any policy");
    let rv = c.create_policy(&friends_only("b"));
    c.enforced(rv);
    c.expect("a", "b", HTTP, false, "with b-friends-only");
    c.expect("c", "b", HTTP, true, "with b-friends-only");
    c
}

// ---------------------------------------------------------------------------

/// kubectl on the host, against the loopback address of the server.
struct Kubectl {
    kubeconfig: TempPath,
    cache: TempPath,
}

impl Kubectl {
    const PATH: &'static str = "/usr/bin/kubectl";

    fn new(server: &Handle) -> Self {
        let kubeconfig = TempPath::new("host-kubeconfig");
        std::fs::write(&kubeconfig.0, server.kubeconfig()).unwrap();
        Self {
            kubeconfig,
            cache: TempPath::new("kubectl-cache"),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(Self::PATH)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig.0)
            .arg("--cache-dir")
            .arg(&self.cache.0)
            .args(args)
            .output()
            .expect("kubectl runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "kubectl {} failed:\n{text}",
            args.join(" ")
        );
        text
    }
}

#[test]
fn kubectl_apply_deny_then_relabel_then_delete_is_enforced() {
    if !lab_ready("kubectl_apply_deny_then_relabel_then_delete_is_enforced") {
        return;
    }
    let mut c = Cluster::new();
    c.pod("a", 10, &[("app", "a")]);
    c.pod("b", 11, &[("app", "b")]);
    let rv = c.pod("c", 12, &[("app", "c"), ("role", "friend")]);
    c.enforced(rv);

    let file = TempPath::new("policy.yaml");
    std::fs::write(
        &file.0,
        "apiVersion: networking.k8s.io/v1\n\
         kind: NetworkPolicy\n\
         metadata:\n  name: b-friends-only\n  namespace: default\n\
         spec:\n\
         \x20 podSelector:\n    matchLabels:\n      app: b\n\
         \x20 ingress:\n\
         \x20 - from:\n    - podSelector:\n        matchLabels:\n          role: friend\n\
         \x20   ports:\n    - port: http\n",
    )
    .unwrap();
    let path = file.0.to_str().unwrap();

    if !Path::new(Kubectl::PATH).exists() {
        // The same steps through the API client, so the controller side
        // is still covered.
        eprintln!(
            "kubectl_apply_deny_then_relabel_then_delete_is_enforced: {} is not installed; \
             skipping the kubectl part, doing the same writes with kube-rs",
            Kubectl::PATH
        );
        let rv = c.create_policy(&friends_only("b"));
        c.enforced(rv);
        c.expect("a", "b", HTTP, false, "after creating the policy");
        let rv = c.label_pod("b", json!({ "app": "b-retired" }));
        c.enforced(rv);
        c.expect("a", "b", HTTP, true, "after b left the selector");
        let rv = c.delete_policy("b-friends-only");
        c.enforced(rv);
        c.expect("a", "b", HTTP, true, "after deleting the policy");
        return;
    }
    let k = Kubectl::new(c.server());
    // The server's resourceVersion after a kubectl command is that of its
    // last write: nothing else writes here.
    let rv_now = |c: &Cluster| c.store.resource_version();

    let out = k.run(&["apply", "-f", path]);
    assert!(out.contains("created"), "{out}");
    c.enforced(rv_now(&c));
    c.expect("a", "b", HTTP, false, "after kubectl apply");
    c.expect("c", "b", HTTP, true, "after kubectl apply (c is a friend)");
    c.expect(
        "c",
        "b",
        Port::tcp(81),
        false,
        "after kubectl apply (only http)",
    );

    // b leaves the selector: no longer isolated.
    k.run(&["label", "pod", "b", "app=b-retired", "--overwrite"]);
    c.enforced(rv_now(&c));
    c.expect("a", "b", HTTP, true, "after b left the selector");

    // b comes back; then a becomes a friend.
    k.run(&["label", "pod", "b", "app=b", "--overwrite"]);
    c.enforced(rv_now(&c));
    c.expect("a", "b", HTTP, false, "after b re-entered the selector");
    k.run(&["label", "pod", "a", "role=friend", "--overwrite"]);
    c.enforced(rv_now(&c));
    c.expect("a", "b", HTTP, true, "after a became a friend");
    k.run(&["label", "pod", "a", "role-"]);
    c.enforced(rv_now(&c));
    c.expect("a", "b", HTTP, false, "after a stopped being a friend");

    let out = k.run(&["delete", "-f", path]);
    assert!(out.contains("deleted"), "{out}");
    c.enforced(rv_now(&c));
    c.expect("a", "b", HTTP, true, "after kubectl delete");
    c.expect("c", "b", Port::tcp(81), true, "after kubectl delete");
}

#[test]
fn a_new_pod_is_enforced_once_its_ip_is_in_its_status() {
    if !lab_ready("a_new_pod_is_enforced_once_its_ip_is_in_its_status") {
        return;
    }
    let mut c = friends_cluster();
    // The Pod object first, without an address (scheduled, not started).
    let rv = c.create_pod_object("new", &[("app", "b")], None);
    c.enforced(rv);
    // Then the sandbox: the kernel has the pod, the API does not know its IP.
    let ip = c.lab_pod_only("new", 20);
    c.node.conntrack_flush().unwrap();
    c.expect(
        "a",
        "new",
        HTTP,
        true,
        "before the pod's IP is in its status (nftpol cannot know it)",
    );

    let status = json!({ "status": {
        "phase": "Running", "podIP": ip, "podIPs": [{ "ip": ip }],
    }});
    let api = c.pods_api();
    let patched =
        c.rt.block_on(api.patch_status("new", &PatchParams::default(), &Patch::Merge(&status)))
            .expect("patch the status");
    let rv = rv_of(&patched.metadata);
    c.enforced(rv);
    c.expect("a", "new", HTTP, false, "once the IP is in the status");
    c.expect("c", "new", HTTP, true, "once the IP is in the status");
}

#[test]
fn enforcement_survives_a_controller_restart() {
    if !lab_ready("enforcement_survives_a_controller_restart") {
        return;
    }
    let c = friends_cluster();
    let (a, cc) = (c.lab_pod("a").netns(), c.lab_pod("c").netns());
    let b_http = c.to("b", HTTP);
    let stop = AtomicBool::new(false);
    let (denied_probes, leaks) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let (allowed_probes, broken) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let started = Instant::now();
    std::thread::scope(|s| {
        // Fresh connections all the time, from 4 threads started 75 ms
        // apart (a batch lasts one probe timeout): each batch has 8 a -> b
        // (must never pass) and 2 c -> b (the control: must always pass).
        for t in 0..4u64 {
            let (stop, denied_probes, leaks) = (&stop, &denied_probes, &leaks);
            let (allowed_probes, broken) = (&allowed_probes, &broken);
            s.spawn(move || {
                std::thread::sleep(Duration::from_millis(75 * t));
                let denied = Probe {
                    from: a,
                    to: b_http,
                    proto: Protocol::Tcp,
                };
                let control = Probe { from: cc, ..denied };
                let mut batch = vec![denied; 8];
                batch.extend([control; 2]);
                while !stop.load(Ordering::Relaxed) {
                    let got = lab::probe_all(&batch, DEFAULT_TIMEOUT).expect("probe");
                    denied_probes.fetch_add(8, Ordering::Relaxed);
                    leaks.fetch_add(got[..8].iter().filter(|ok| **ok).count(), Ordering::Relaxed);
                    allowed_probes.fetch_add(2, Ordering::Relaxed);
                    broken.fetch_add(
                        got[8..].iter().filter(|ok| !**ok).count(),
                        Ordering::Relaxed,
                    );
                }
            });
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for round in 1..=2 {
                let old = c.controller.pid();
                c.controller.kill().expect("kill the controller");
                // A moment without any controller.
                std::thread::sleep(Duration::from_millis(400));
                c.controller.restart().expect("restart the controller");
                assert_ne!(c.controller.pid(), old);
                c.controller
                    .wait_ready(SYNC_TIMEOUT)
                    .unwrap_or_else(|e| panic!("after restart {round}: {e}"));
                let st = c
                    .controller
                    .wait_synced(c.store.resource_version(), SYNC_TIMEOUT)
                    .unwrap_or_else(|e| panic!("after restart {round}: {e}"));
                assert!(st.full_syncs >= 1, "a new process starts with a full sync");
                // Let the probes run against the new process for a moment.
                std::thread::sleep(Duration::from_millis(500));
            }
        }));
        stop.store(true, Ordering::Relaxed);
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
    });
    let (n, leaked) = (
        denied_probes.load(Ordering::Relaxed),
        leaks.load(Ordering::Relaxed),
    );
    let (m, failed) = (
        allowed_probes.load(Ordering::Relaxed),
        broken.load(Ordering::Relaxed),
    );
    eprintln!(
        "{n} probes a -> b and {m} probes c -> b during two kill -9 / restart cycles in {:?}",
        started.elapsed()
    );
    assert!(n >= 100, "only {n} probes of the denied pair");
    assert_eq!(leaked, 0, "{leaked} of {n} a -> b probes got through");
    assert_eq!(failed, 0, "{failed} of {m} c -> b (allowed) probes failed");
    c.node.conntrack_flush().unwrap();
    c.expect("a", "b", HTTP, false, "after the restarts");
}

#[test]
fn rules_stay_while_the_api_server_is_away() {
    if !lab_ready("rules_stay_while_the_api_server_is_away") {
        return;
    }
    let mut c = friends_cluster();
    let before = c.controller.status().unwrap();
    c.stop_server();
    c.controller
        .wait_readiness(false, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("with the API server gone: {e}"));
    // Longer than a resync period: the full resync re-applies the last state.
    let away = Instant::now();
    while away.elapsed() < RESYNC + Duration::from_millis(500) {
        c.node.conntrack_flush().unwrap();
        c.expect("a", "b", HTTP, false, "while the API server is away");
        c.expect("c", "b", HTTP, true, "while the API server is away");
        std::thread::sleep(Duration::from_millis(200));
    }
    let during = c.controller.status().unwrap();
    assert!(
        during.full_syncs > before.full_syncs,
        "a resync should have run while the server was away: {before:?} -> {during:?}"
    );
    assert_eq!(during.failed_syncs, 0, "{during:?}");

    c.start_server(true);
    // A change made after the server is back is enforced.
    let rv = c.label_pod("b", json!({ "app": "b-retired" }));
    c.enforced(rv);
    c.expect(
        "a",
        "b",
        HTTP,
        true,
        "after a change made once the server is back",
    );
}

#[test]
fn readyz_recovers_when_the_api_server_returns() {
    if !lab_ready("readyz_recovers_when_the_api_server_returns") {
        return;
    }
    let mut c = friends_cluster();
    c.stop_server();
    c.controller
        .wait_readiness(false, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("with the API server gone: {e}"));
    std::thread::sleep(Duration::from_millis(500));
    c.start_server(true);
    // The watches resume (no 410: the history is kept), no object changes.
    c.controller
        .wait_ready(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("the API server is back (and the watches with it), yet: {e}"));
}

#[test]
fn a_table_deleted_by_hand_is_repaired_within_one_resync() {
    if !lab_ready("a_table_deleted_by_hand_is_repaired_within_one_resync") {
        return;
    }
    let c = friends_cluster();
    let before = c.controller.status().unwrap();
    c.node
        .netns()
        .exec(&["nft", "delete", "table", "inet", nftpol::nft::DEFAULT_TABLE])
        .expect("nft delete table");
    assert!(c.table().is_none());
    let deleted = Instant::now();
    let deadline = deleted + RESYNC + Duration::from_secs(3);
    while c.table().is_none() {
        assert!(
            Instant::now() < deadline,
            "the table was not restored within {:?} (resync period {RESYNC:?}); /status: {:?}\n{}",
            deadline - deleted,
            c.controller.status(),
            c.controller.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("table restored {:?} after its deletion", deleted.elapsed());
    // The kernel has the table a moment before the controller counts the
    // sync that wrote it.
    let mut after = c.controller.status().unwrap();
    while after.full_syncs <= before.full_syncs && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        after = c.controller.status().unwrap();
    }
    assert!(
        after.full_syncs > before.full_syncs,
        "the repair should be a full sync: {before:?} -> {after:?}"
    );
    c.node.conntrack_flush().unwrap();
    c.expect("a", "b", HTTP, false, "after the repair");
    c.expect("c", "b", HTTP, true, "after the repair");
}

#[test]
fn a_compacted_history_makes_the_controller_relist() {
    if !lab_ready("a_compacted_history_makes_the_controller_relist") {
        return;
    }
    let mut c = friends_cluster();
    // Changes the controller cannot see as they happen: the server is
    // reachable from the test (loopback) but not from the node.
    c.stop_server();
    c.start_server(false);
    let rv_created = c.create_policy(&friends_only("a"));
    let rv_deleted = c.delete_policy("b-friends-only");
    assert!(rv_deleted > rv_created);
    // ... and the history that would replay them is gone.
    c.server().compact_history();
    c.stop_server();
    c.start_server(true);

    // The controller's watches resume from an old resourceVersion, get
    // 410 Expired and relist.
    let relisted = c.controller.wait_synced(rv_created, SYNC_TIMEOUT);
    let log = c.controller.log();
    assert!(
        log.contains("(410); relisting"),
        "the watches should have been told 410 Expired (and relisted):\n{}",
        c.controller.log_tail(30)
    );
    relisted.unwrap_or_else(|e| panic!("{e}"));
    // The relist must also drop what was deleted in the gap.
    let deadline = Instant::now() + SYNC_TIMEOUT;
    let status = loop {
        let st = c.controller.status().unwrap();
        if st.synced_resource_version >= rv_deleted || Instant::now() >= deadline {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    c.node.conntrack_flush().unwrap();
    let (a_to_b, b_to_a) = (c.can("a", "b", HTTP), c.can("b", "a", HTTP));
    assert!(
        status.synced_resource_version >= rv_deleted,
        "after the relist /status never reached the resourceVersion of the deletion made in \
         the gap ({rv_deleted}); it says {} (the newest object it listed). Meanwhile the \
         kernel has: a -> b {} (policy deleted: should be allowed), b -> a {} (policy created: \
         should be denied). Status: {status:?}",
        status.synced_resource_version,
        verdict(a_to_b),
        verdict(b_to_a),
    );
    assert!(a_to_b, "the policy deleted in the gap still applies");
    assert!(!b_to_a, "the policy created in the gap does not apply");

    // And the watches work again: a live change is enforced.
    let rv = c.label_pod("b", json!({ "app": "b", "role": "friend" }));
    c.enforced(rv);
    c.expect("b", "a", HTTP, true, "after b became a friend");
}

#[test]
fn a_burst_of_1000_pod_events_is_coalesced_into_few_syncs() {
    if !lab_ready("a_burst_of_1000_pod_events_is_coalesced_into_few_syncs") {
        return;
    }
    const PEERS: usize = 999;
    let c = friends_cluster();
    let before = c.controller.status().unwrap();
    let api = c.pods_api();
    let started = Instant::now();
    let last_rv = c.rt.block_on(async {
        // 999 friends on another node, 32 writes in flight ...
        let rvs: Vec<u64> = futures::stream::iter(0..PEERS)
            .map(|i| {
                let api = api.clone();
                async move {
                    let ip = Ipv4Addr::new(10, 244, 2 + (i / 250) as u8, 1 + (i % 250) as u8);
                    let mut pod = api_pod(&format!("peer-{i}"), &[("role", "friend")], Some(ip));
                    pod.spec.as_mut().unwrap().node_name = Some("node-2".into());
                    api.create(&PostParams::default(), &pod)
                        .await
                        .map(|p| rv_of(&p.metadata))
                }
            })
            .buffer_unordered(32)
            .try_collect()
            .await
            .expect("create the peers");
        // ... and the 1000th event: a becomes a friend too.
        let patch = json!({ "metadata": { "labels": { "role": "friend" } } });
        let a = api
            .patch("a", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("label a");
        rvs.into_iter().max().unwrap().max(rv_of(&a.metadata))
    });
    let written = started.elapsed();
    c.enforced(last_rv);
    let took = started.elapsed();
    let after = c.controller.status().unwrap();
    let syncs = after.syncs - before.syncs;
    eprintln!(
        "1000 pod events written in {written:?}, enforced after {took:?} with {syncs} syncs \
         ({} of them full)",
        after.full_syncs - before.full_syncs
    );
    // Coalesced: at most one sync per minimum interval while the events
    // arrived (how many intervals that is depends on how fast this machine
    // writes them), and far fewer syncs than events.
    let interval = c.controller.config().min_sync_interval;
    let at_most = (took.as_secs_f64() / interval.as_secs_f64()).ceil() as u64 + 2;
    assert!(
        syncs <= at_most && syncs < 250,
        "1000 events in {took:?} took {syncs} syncs (at most {at_most}, one per {interval:?}, \
         and fewer than 250): they should be coalesced"
    );
    // Every friend is in b's allow-list in the kernel (sampled: the ends and
    // the middle of each run of 250)...
    // (Single tuples sit in the hash set, runs of neighbours in the interval
    // set.)
    for n in 2..=5u8 {
        for host in [1u8, 125, if n == 5 { 249 } else { 250 }] {
            let elem = format!("{{ 10.244.{n}.{host} . tcp . 80 }}");
            let held = ["tuples4", "boxes4"].iter().any(|part| {
                let set = format!("pod-in/{NS}/b.{part}");
                c.node
                    .netns()
                    .exec(&["nft", "get", "element", "inet", "nftpol", &set, &elem])
                    .is_ok()
            });
            assert!(held, "10.244.{n}.{host} should be allowed to b on tcp 80");
        }
    }
    // ... where consecutive addresses are ranges, not 999 elements.
    assert!(
        after.set_elements < 100,
        "the friends' addresses should be merged into ranges: {after:?}"
    );
    c.expect("a", "b", HTTP, true, "once a is a friend");
    c.expect("a", "b", Port::tcp(81), false, "only http is allowed");
}

#[test]
fn the_controller_idles_while_the_api_server_is_unreachable_at_start() {
    if !lab_ready("the_controller_idles_while_the_api_server_is_unreachable_at_start") {
        return;
    }
    let lan = Lan::new().expect("create the LAN");
    let node = Node::new(NodeConfig::new(NODE, 1)).expect("create the node");
    node.join_lan(&lan).expect("plug the node into the LAN");
    // Nothing listens there.
    let kubeconfig = TempPath::new("node-kubeconfig");
    std::fs::write(
        &kubeconfig.0,
        devserver::kubeconfig_yaml(&format!("http://{}:6443", lan.ipv4())),
    )
    .unwrap();
    let resync = Duration::from_millis(1500);
    let started = Instant::now();
    let controller = Controller::start(
        &node,
        ControllerConfig {
            resync_period: resync,
            ..ControllerConfig::new(env!("CARGO_BIN_EXE_nftpol"), NODE, &kubeconfig.0)
        },
    )
    .expect("start nftpol run");
    controller
        .wait_readiness(false, SYNC_TIMEOUT)
        .unwrap_or_else(|e| panic!("without an API server: {e}"));
    let pid = controller.pid().unwrap();
    let cpu = || -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the command name "(...)": utime and stime are 14 and 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10) // USER_HZ = 100
    };
    // CPU time over 1.2 s windows: before the first resync period has
    // passed, and after it.
    let measure = || {
        let (t0, c0) = (Instant::now(), cpu());
        std::thread::sleep(Duration::from_millis(1200));
        (cpu() - c0, t0.elapsed())
    };
    let (before_used, before_wall) = measure();
    let until = started + resync + Duration::from_millis(300);
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    let (after_used, after_wall) = measure();
    assert!(controller.is_running(), "{}", controller.log_tail(20));
    eprintln!(
        "CPU of the waiting controller: {before_used:?} in {before_wall:?} before the first \
         resync period ({resync:?}) ended, {after_used:?} in {after_wall:?} after"
    );
    assert!(
        before_used < before_wall / 5 && after_used < after_wall / 5,
        "waiting for an unreachable API server, the controller used {before_used:?} of CPU in \
         {before_wall:?} before its first resync period ({resync:?}) ended and {after_used:?} \
         in {after_wall:?} after: it should sleep between retries\n{}",
        controller.log_tail(10)
    );
}

/// `/status` promises "every API change up to synced_resource_version is
/// enforced", but the controller reports the highest resourceVersion any of
/// its three watches has delivered. When the watches reconnect at different
/// times (each has its own jittered backoff), a pod change is reported
/// enforced while an older policy change is still unseen (here: in every
/// run, within the first two attempts, the policy change following about
/// 0.6-0.9 s later). Which watch reconnects first is chance, so this is
/// ignored by default: `cargo test --test controller -- --ignored`.
#[test]
#[ignore = "slow (about 50 s): a soak against the per-kind /status race fixed in the watch loop; run with --ignored"]
fn synced_resource_version_covers_every_watch() {
    if !lab_ready("synced_resource_version_covers_every_watch") {
        return;
    }
    let mut c = friends_cluster();
    let isolate_a = mk_policy(
        NS,
        "a-isolated",
        json!({ "podSelector": { "matchLabels": { "app": "a" } } }),
    );
    for attempt in 0..4 {
        c.stop_server();
        // Long enough for the three watches' backoffs to drift apart.
        std::thread::sleep(Duration::from_millis(2500));
        c.start_server(true);
        let isolated = attempt % 2 == 0;
        let rv_policy = if isolated {
            c.create_policy(&isolate_a)
        } else {
            c.delete_policy("a-isolated")
        };
        let rv_pod = c.label_pod("c", json!({ "attempt": attempt.to_string() }));
        assert!(rv_pod > rv_policy);
        let st = c
            .controller
            .wait_synced(rv_pod, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e}"));
        c.node.conntrack_flush().unwrap();
        let b_to_a = c.can("b", "a", HTTP);
        if b_to_a != isolated {
            // Settle before the next attempt.
            c.enforced(c.store.resource_version());
            continue;
        }
        // Caught: how long until the policy change shows (nothing else is written)?
        let seen = Instant::now();
        let late = loop {
            c.node.conntrack_flush().unwrap();
            if c.can("b", "a", HTTP) != isolated {
                break format!("it was enforced {:?} later", seen.elapsed());
            }
            if seen.elapsed() > Duration::from_secs(15) {
                break "it was still not enforced 15 s later".to_string();
            }
        };
        panic!(
            "attempt {attempt}: /status said everything up to {} was enforced, but the policy \
             change at resourceVersion {rv_policy} ({} a-isolated) was not: b -> a was {}; {late}",
            st.synced_resource_version,
            if isolated { "create" } else { "delete" },
            verdict(b_to_a)
        );
    }
}

// ---------------------------------------------------------------------------
// The runtime edge: a failing nft, the node's settings, stale flows.

/// A stand-in for `nft` that runs the real one, except while the file
/// `broken` next to it exists.
struct NftSwitch {
    dir: TempPath,
}

impl NftSwitch {
    fn new() -> Self {
        let dir = TempPath::new("nft-switch");
        std::fs::create_dir_all(&dir.0).unwrap();
        let script = dir.0.join("nft");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nif [ -e '{}' ]; then echo 'nft broken by the test' >&2; exit 1; fi\nexec nft \"$@\"\n",
                dir.0.join("broken").display()
            ),
        )
        .unwrap();
        Command::new("chmod")
            .arg("+x")
            .arg(&script)
            .status()
            .unwrap();
        Self { dir }
    }

    /// `nftpol run` arguments that make it run this `nft`.
    fn args(&self) -> Vec<String> {
        vec![
            "--nft-command".into(),
            self.dir.0.join("nft").display().to_string(),
        ]
    }

    fn set_broken(&self, broken: bool) {
        let flag = self.dir.0.join("broken");
        if broken {
            std::fs::write(flag, "").unwrap();
        } else {
            std::fs::remove_file(flag).unwrap();
        }
    }
}

/// The value of a metric without labels on `/metrics`.
fn metric(c: &Cluster, name: &str) -> Option<f64> {
    let body = c.controller.get("/metrics").expect("/metrics").body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_broken_nft_degrades_enforcement_but_changes_still_reach_the_kernel() {
    if !lab_ready("a_broken_nft_degrades_enforcement_but_changes_still_reach_the_kernel") {
        return;
    }
    let nft = NftSwitch::new();
    let c = friends_cluster_with(Cluster::with_args(nft.args()));
    assert_eq!(metric(&c, "nftpol_enforcement_degraded"), Some(0.0));

    // The next periodic resync wants a full replacement, which fails.
    nft.set_broken(true);
    c.controller
        .wait_readiness(false, RESYNC + SYNC_TIMEOUT)
        .unwrap_or_else(|e| panic!("with nft broken: {e}"));
    let why = c.controller.readyz().unwrap_err();
    assert!(
        why.contains("enforcement degraded") && why.contains("nft broken by the test"),
        "{why}"
    );
    let st = c.controller.status().unwrap();
    assert!(st.degraded.is_some(), "{st:?}");
    assert_eq!(metric(&c, "nftpol_enforcement_degraded"), Some(1.0));
    let before = st;

    // Changes are still enforced, over netlink: an element (a becomes a
    // friend of b) and a new pod chain (a isolated).
    let rv = c.label_pod("a", json!({ "role": "friend" }));
    c.enforced(rv);
    c.expect("a", "b", HTTP, true, "a became a friend, nft broken");
    let rv = c.create_policy(&mk_policy(
        NS,
        "a-isolated",
        json!({ "podSelector": { "matchLabels": { "app": "a" } } }),
    ));
    c.enforced(rv);
    c.expect("b", "a", HTTP, false, "a isolated, nft broken");
    c.expect("a", "b", HTTP, true, "a isolated, nft broken");
    let st = c.controller.status().unwrap();
    assert!(st.degraded.is_some(), "still degraded: {st:?}");
    assert_eq!(st.full_syncs, before.full_syncs, "{before:?} -> {st:?}");

    // nft works again: a full replacement succeeds (retry or resync).
    nft.set_broken(false);
    c.controller
        .wait_ready(RESYNC + SYNC_TIMEOUT)
        .unwrap_or_else(|e| panic!("with nft fixed: {e}"));
    let st = c.controller.status().unwrap();
    assert_eq!(st.degraded, None);
    assert!(st.full_syncs > before.full_syncs, "{before:?} -> {st:?}");
    assert_eq!(metric(&c, "nftpol_enforcement_degraded"), Some(0.0));
    c.node.conntrack_flush().unwrap();
    c.expect("b", "a", HTTP, false, "after the full replacement");
    c.expect("a", "b", HTTP, true, "after the full replacement");
    c.expect("a", "b", Port::tcp(81), false, "after the full replacement");
}

#[test]
fn an_unsafe_bridge_setting_makes_the_controller_unready_until_fixed() {
    if !lab_ready("an_unsafe_bridge_setting_makes_the_controller_unready_until_fixed") {
        return;
    }
    let c = Cluster::new();
    let st = c.controller.status().unwrap();
    assert_eq!(st.node.bridge_nf_call_ip6tables, Some(true), "{st:?}");
    assert_eq!(st.node.ipv4_forwarding, Some(true), "{st:?}");

    c.node
        .netns()
        .sysctl(&["net.bridge.bridge-nf-call-ip6tables=0"])
        .unwrap();
    // Found at the next periodic resync.
    c.controller
        .wait_readiness(false, RESYNC + SYNC_TIMEOUT)
        .unwrap_or_else(|e| panic!("with bridge-nf-call-ip6tables=0: {e}"));
    let why = c.controller.readyz().unwrap_err();
    assert!(
        why.contains("net.bridge.bridge-nf-call-ip6tables is 0"),
        "{why}"
    );
    let st = c.controller.status().unwrap();
    assert_eq!(st.node.bridge_nf_call_ip6tables, Some(false), "{st:?}");
    assert_eq!(st.node.problems.len(), 1, "{st:?}");
    assert!(
        c.controller.log().contains("bridge-nf-call-ip6tables is 0"),
        "an error is logged:\n{}",
        c.controller.log_tail(20)
    );

    c.node
        .netns()
        .sysctl(&["net.bridge.bridge-nf-call-ip6tables=1"])
        .unwrap();
    c.controller
        .wait_ready(RESYNC + SYNC_TIMEOUT)
        .unwrap_or_else(|e| panic!("with bridge-nf-call-ip6tables=1 again: {e}"));
    assert_eq!(
        c.controller.status().unwrap().node.problems,
        Vec::<String>::new()
    );
}

#[test]
fn kube_proxy_in_ipvs_mode_makes_the_controller_unready() {
    if !lab_ready("kube_proxy_in_ipvs_mode_makes_the_controller_unready") {
        return;
    }
    let c = Cluster::new();
    // kube-proxy makes a dummy device; any link of that name shows IPVS mode.
    c.node
        .netns()
        .ip(&["link", "add", "kube-ipvs0", "type", "bridge"])
        .unwrap();
    c.controller
        .wait_readiness(false, RESYNC + SYNC_TIMEOUT)
        .unwrap_or_else(|e| panic!("with kube-ipvs0: {e}"));
    let why = c.controller.readyz().unwrap_err();
    assert!(
        why.contains("IPVS mode") && why.contains("kube-ipvs0"),
        "{why}"
    );
    assert!(c.controller.status().unwrap().node.kube_proxy_ipvs);
    assert!(c.controller.log().contains("kube-proxy runs in IPVS mode"));
}

#[test]
fn the_flows_of_a_deleted_pod_are_deleted_from_conntrack() {
    if !lab_ready("the_flows_of_a_deleted_pod_are_deleted_from_conntrack") {
        return;
    }
    let mut c = Cluster::new();
    c.pod("a", 10, &[("app", "a")]);
    c.pod("b", 11, &[("app", "b")]);
    let rv = c.pod("gone", 12, &[("app", "gone")]);
    c.enforced(rv);
    let dns = Port::udp(53);
    for pod in ["b", "gone"] {
        c.lab_pod(pod).serve(&[dns]).unwrap();
        assert!(c.can("a", pod, dns), "a -> {pod} over UDP");
    }
    let gone_ip = IpAddr::from(c.lab_pod("gone").ipv4());
    let b_ip = IpAddr::from(c.lab_pod("b").ipv4());
    let mut ct = nftpol::conntrack::Conntrack::open(Some(&c.node.netns().path())).unwrap();
    let flows_of = |ct: &mut nftpol::conntrack::Conntrack, ip: IpAddr| {
        ct.entries()
            .unwrap()
            .iter()
            .filter(|e| e.original.dst == ip && e.original.proto == 17)
            .count()
    };
    assert_eq!(flows_of(&mut ct, gone_ip), 1);
    assert_eq!(flows_of(&mut ct, b_ip), 1);

    // The pod object goes; the next pod with its address must not
    // inherit its flows.
    c.rt.block_on(c.pods_api().delete("gone", &DeleteParams::default()))
        .expect("delete the pod");
    let rv = c.store.resource_version();
    c.controller
        .wait_synced(rv, SYNC_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        flows_of(&mut ct, gone_ip),
        0,
        "the deleted pod's flow is gone"
    );
    assert_eq!(flows_of(&mut ct, b_ip), 1, "other flows stay");
    assert!(
        metric(&c, "nftpol_conntrack_entries_deleted_total").is_some_and(|n| n >= 1.0),
        "{}",
        c.controller.log_tail(10)
    );
}

#[test]
fn a_reused_address_gets_the_rules_of_its_newest_pod_and_goes_back_when_it_leaves() {
    if !lab_ready("a_reused_address_gets_the_rules_of_its_newest_pod_and_goes_back_when_it_leaves")
    {
        return;
    }
    // Issue #11, row D: c (a friend of b) is still in the API when another
    // pod is given its address. The newer pod owns the address: it gets its
    // own rules (deny-all), and the friend's allowance no longer applies to
    // the address.
    let c = friends_cluster();
    c.expect("a", "c", HTTP, true, "before the address is reused");
    let rv = c.create_policy(&mk_policy(
        NS,
        "impostor-deny-all",
        json!({ "podSelector": { "matchLabels": { "app": "impostor" } } }),
    ));
    c.enforced(rv);
    let reused = c.lab_pod("c").ipv4();
    // Creation timestamps have whole seconds: make the new pod newer.
    std::thread::sleep(Duration::from_millis(1100));
    let rv = c.create_pod_object("impostor", &[("app", "impostor")], Some(reused));
    c.enforced(rv);
    c.expect(
        "a",
        "c",
        HTTP,
        false,
        "the address is the impostor's: its deny-all applies",
    );
    c.expect("c", "b", HTTP, false, "the address is no friend's any more");

    let api = c.pods_api();
    c.rt.block_on(api.delete("impostor", &DeleteParams::default()))
        .expect("delete the impostor");
    c.enforced(c.store.resource_version());
    c.expect("a", "c", HTTP, true, "the address is c's again");
    c.expect("c", "b", HTTP, true, "c is a friend again");
}
