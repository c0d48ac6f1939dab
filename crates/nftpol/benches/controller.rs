//! End-to-end controller benchmark: the development API server in-process,
//! the real `nftpol run` binary as a child process, rules in a network
//! namespace.
//!
//! ```text
//! cargo bench --bench controller                          # 10k latency + RSS at 10k and 100k
//! NFTPOL_BENCH_QUICK=1 cargo bench --bench controller     # 10k, 10 repetitions, no 100k (or: -- --quick)
//! NFTPOL_BENCH_CHANGES_VIA=nft cargo bench --bench controller  # incremental changes through nft, as before netlink
//! NFTPOL_BENCH_BIG=100000/1000/500 cargo bench --bench controller   # shape of the big cluster (none: skip it)
//! NFTPOL_BENCH_REPS=20 NFTPOL_BENCH_POLL_MS=5 cargo bench --bench controller   # changes per kind, /status poll period
//! NFTPOL_BENCH_KEEP_LOGS=1 cargo bench --bench controller # keep the controller's (JSON, debug) logs
//! NFTPOL_BENCH_BIN=/path/to/nftpol cargo bench --bench controller   # measure another build
//! NFTPOL_BENCH_HOLD_SECS=30 cargo bench --bench controller  # 100k: pause after the first sync and after the syncs (attach gdb, heaptrack)
//! NFTPOL_BENCH_PROFILE=mem[:10k] cargo bench --bench controller    # where the memory goes, in-process
//! NFTPOL_BENCH_PROFILE=batches:DIR cargo bench --bench controller  # write the nft batches of each change
//! ```
//!
//! 1. A synthetic cluster (10k pods / 1k policies / 500 namespaces, 110 pods
//!    on `node-1`) is created on the devserver over HTTP, then `nftpol run
//!    --netns NS --changes-via netlink --min-sync-interval 10ms
//!    --resync-period 1h` starts (the release binary cargo builds for
//!    benches, `CARGO_BIN_EXE_nftpol`) and the bench waits for `/status` to
//!    report the load's resourceVersion.
//! 2. Four kinds of change: (a) a pod added on node-1 that policies isolate,
//!    (b) a node-1 pod moved to another app, (c) a policy added that selects
//!    node-1 pods, (d) a namespace relabelled into or out of a peer set of
//!    node-1's policies. Each is made N times (50; 10 quick), 30 ms after
//!    the previous change was enforced, and undone after each time
//!    (untimed), so that every repetition starts from the same cluster.
//!    Measured: from just before the API write to the first `/status` poll
//!    (every 1 ms, kept-alive connection) that reports the write's
//!    resourceVersion enforced (`synced[kind]`, or `synced_resource_version`
//!    where the controller reports no kinds). Where the time goes: the
//!    controller's own per-sync time (compile + render + diff + nft, from
//!    its debug log), its CPU and run-queue time (`/proc/PID/task/*/schedstat`)
//!    and that of its `ip`/`nft` children, and in-process the phases of the
//!    same sync one by one.
//! 3. VmRSS / VmHWM of the controller at 10k, and with 100k pods over ~900
//!    nodes (policies and namespaces scaled alike: 10k / 5k by default).
//!
//! Root only (network namespaces); prints `skipped (needs root)` otherwise.
//! The namespace and the controller are removed on exit and on panic; a run
//! that was killed leaves them behind, and the next run removes them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use nftpol::compiler::{Incremental, PodInfo, PolicyObject, Snapshot, compile, policy_key};
use nftpol::nft::render::Renderer;
use nftpol::nft::transport::{json, netlink};
use nftpol::nft::{Netlink, Nft, Syncer, ops, render};
use nftpol::watch::store::Changes;
use nftpol::watch::{Delta, NAMESPACES, PODS, POLICIES, SyncStatus};
use nftpol_lab::devserver::{Config, DevServer, Handle};
use nftpol_lab::fixtures::{namespace_object, pod_object, policy_object};
use nftpol_lab::lab::Netns;
use nftpol_lab::report::{loadavg, median, table};
use nftpol_lab::synth::{
    SynthSpec, synth_cluster, with_local_pod_added, with_pod_relabeled, with_policy_added,
};
use serde_json::{Value, json};

/// Counts live and peak heap bytes, for `NFTPOL_BENCH_PROFILE=mem` (the
/// controller runs in its own process, unaffected).
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// What glibc's malloc uses for the live allocations: size + 8, rounded up
/// to 16, at least 32 bytes.
static CHUNKS: AtomicUsize = AtomicUsize::new(0);

fn chunk(size: usize) -> usize {
    ((size + 8 + 15) & !15).max(32)
}

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
            ALLOCS.fetch_add(1, Ordering::Relaxed);
            CHUNKS.fetch_add(chunk(layout.size()), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        ALLOCS.fetch_sub(1, Ordering::Relaxed);
        CHUNKS.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        let q = unsafe { std::alloc::System.realloc(p, layout, new) };
        if !q.is_null() {
            CHUNKS.fetch_add(chunk(new), Ordering::Relaxed);
            CHUNKS.fetch_sub(chunk(layout.size()), Ordering::Relaxed);
            if new >= layout.size() {
                let now =
                    LIVE.fetch_add(new - layout.size(), Ordering::Relaxed) + new - layout.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const NODE: &str = "node-1";
const TABLE: &str = "nftpol";
const MIN_SYNC_INTERVAL: &str = "10ms";

/// Issue #3's target, and issue #5's stricter one.
const LATENCY_TARGET: Duration = Duration::from_millis(50);
const LATENCY_TARGET_STRICT: Duration = Duration::from_millis(20);
/// 150 MiB, in KiB as /proc reports it.
const RSS_TARGET_KIB: u64 = 150 * 1024;
/// Issue #5's: 100 MB (10^6 bytes) with 100k pods in the store.
const RSS_TARGET_STRICT_MB: f64 = 100.0;
/// Pause between one change enforced and the next write.
const SPACING: Duration = Duration::from_millis(30);

fn main() {
    let quick = std::env::var("NFTPOL_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
        || std::env::args().any(|a| a == "--quick");
    let reps = env_num("NFTPOL_BENCH_REPS").unwrap_or(if quick { 10 } else { 50 });
    let poll = Duration::from_millis(env_num("NFTPOL_BENCH_POLL_MS").unwrap_or(1) as u64);
    let big = big_spec();
    if let Ok(what) = std::env::var("NFTPOL_BENCH_PROFILE") {
        return profile(&what);
    }
    let mut report = Report {
        load_before: loadavg(),
        title: format!(
            "nftpol controller benchmark{} — devserver + `nftpol run` (release), node {NODE}, \
             --min-sync-interval {MIN_SYNC_INTERVAL}, {reps} changes per kind, {} ms apart, \
             /status polled every {} ms",
            if quick { " (quick)" } else { "" },
            SPACING.as_millis(),
            poll.as_millis()
        ),
        ..Report::default()
    };
    if let Err(why) = kernel_access() {
        report.skipped = Some(why);
        report.print(quick);
        return;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // NFTPOL_BENCH_BIN: another build of the controller, to compare.
    let bin = std::env::var_os("NFTPOL_BENCH_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_nftpol")),
        PathBuf::from,
    );
    let dir = TempDir::create();
    let ns = Netns::create("cbench").unwrap_or_else(|e| panic!("ip netns add: {e}"));
    eprintln!("controller binary: {}", bin.display());

    // The exec floor, before anything is loaded.
    report.floor_list = median_of(20, || {
        ns.nft()
            .run(&["list", "tables"], None)
            .expect("nft list tables");
    });
    report.floor_host = median_of(20, || {
        // Read-only, in this (the host's) namespace.
        Command::new("nft")
            .args(["list", "tables"])
            .stdout(Stdio::null())
            .status()
            .expect("nft list tables");
    });
    report.floor_plain = median_of(20, || {
        Command::new("nft")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .expect("nft --version");
    });

    // ---- 10k: latency and memory.
    let spec = SynthSpec {
        node: NODE.into(),
        ..SynthSpec::new(10_000, 1_000, 500)
    };
    {
        let mut c = Cluster::start(&runtime, &spec, &dir, "10k");
        let ctl = Controller::start(&bin, &ns, &c.kubeconfig, &dir.0.join("controller-10k.log"));
        c.first_sync(&ctl);
        report.rss_10k_first = Some(ctl.mem());
        report.first_sync_10k = c.first_sync;
        report.load_10k = (c.load_time, c.objects);
        report.full_sync_10k = ctl.log_syncs(0).1.first().map(|s| s.elapsed);

        // An `add table` for the existing table: exec + nft start + cache, nothing changed.
        let noop = json!({"nftables": [{"add": {"table": {"family": "inet", "name": TABLE}}}]});
        report.floor_noop = median_of(20, || {
            ns.nft().apply_json(TABLE, &noop).expect("nft no-op batch");
        });

        let snap = synth_cluster(&spec);
        let scenarios = build_scenarios(&snap, &spec);
        let mut driver = Driver {
            api: Http::new(c.server.addr),
            status: Http::new(ctl.status_addr),
            ctl: &ctl,
            server: &c.server,
            poll,
            cursor: ctl.log_len(),
        };
        for sc in &scenarios {
            eprintln!("== {}", sc.name);
            let r = driver.run(sc, reps);
            eprintln!(
                "   p50 {} p99 {} max {} ({} of {} syncs changed the kernel)",
                ms(r.pct(0.5)),
                ms(r.pct(0.99)),
                ms(r.pct(1.0)),
                r.syncs.iter().filter(|s| s.commands > 0).count(),
                r.syncs.len()
            );
            report.scenarios.push(r);
        }
        drop(driver);
        report.rss_10k_after = Some(ctl.mem());
        drop(ctl);

        // Where a sync's time goes, phase by phase, in-process.
        let scratch =
            Netns::create("cbench-scratch").unwrap_or_else(|e| panic!("ip netns add: {e}"));
        let nl = scratch
            .netlink()
            .expect("a netlink socket in the scratch namespace");
        report.phases = phases(&scenarios, &scratch.nft(), nl, if quick { 3 } else { 7 });
        c.stop(&runtime);
    }

    // ---- 100k: memory.
    if let Some(big) = big.filter(|_| !quick) {
        let mut c = Cluster::start(&runtime, &big, &dir, "big");
        // What serving the pod list costs the devserver, apart.
        let t = Instant::now();
        let (_, body) = Http::new(c.server.addr)
            .request("GET", "/api/v1/pods", None, b"")
            .expect("list pods");
        let list_time = (t.elapsed(), body.len());
        drop(body);
        eprintln!(
            "   GET /api/v1/pods: {:.1?}, {:.0} MiB",
            list_time.0,
            list_time.1 as f64 / (1 << 20) as f64
        );
        let ctl = Controller::start(&bin, &ns, &c.kubeconfig, &dir.0.join("controller-big.log"));
        c.first_sync(&ctl);
        let first = ctl.mem();
        let full = ctl.log_syncs(0).1.first().map(|s| s.elapsed);
        if let Some(secs) = env_num("NFTPOL_BENCH_HOLD_SECS") {
            // Time to attach a tool (gdb, heaptrack -p, perf) to the controller.
            eprintln!("   holding {secs} s: controller pid {}", ctl.pid());
            std::thread::sleep(Duration::from_secs(secs as u64));
            eprintln!("   VmRSS now {}", mib(ctl.mem().rss_kib));
        }
        // A few ordinary syncs: the memory a running controller keeps.
        let snap = synth_cluster(&big);
        let mut driver = Driver {
            api: Http::new(c.server.addr),
            status: Http::new(ctl.status_addr),
            ctl: &ctl,
            server: &c.server,
            poll,
            cursor: ctl.log_len(),
        };
        let mut s = snap.clone();
        let mut incr = Vec::new();
        for _ in 0..5 {
            s = with_local_pod_added(&s, &big);
            let pod = s.pods.last().expect("a pod was added").clone();
            std::thread::sleep(SPACING);
            let (lat, _) = driver.write_and_wait(&Write_::create_pod(&pod));
            incr.push(lat);
        }
        let mut status = driver.status;
        let after = ctl.mem();
        if let Some(secs) = env_num("NFTPOL_BENCH_HOLD_SECS") {
            eprintln!(
                "   holding again {secs} s after the syncs: controller pid {}",
                ctl.pid()
            );
            std::thread::sleep(Duration::from_secs(secs as u64));
        }
        let status_now = ctl.status(&mut status).expect("status");
        report.big = Some(Big {
            list_time,
            spec: big.clone(),
            load: (c.load_time, c.objects),
            first_sync: c.first_sync,
            full_sync: full,
            first,
            after,
            incr,
            stats: (status_now.chains, status_now.rules, status_now.set_elements),
        });
        drop(ctl);
        c.stop(&runtime);
    }
    report.load_after = loadavg();
    report.print(quick);
}

/// `--changes-via` of the controller: `NFTPOL_BENCH_CHANGES_VIA`
/// (`netlink`, the default, or `nft`).
fn changes_via() -> String {
    std::env::var("NFTPOL_BENCH_CHANGES_VIA").unwrap_or_else(|_| "netlink".into())
}

fn env_num(name: &str) -> Option<usize> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {v:?}")),
    )
}

/// `NFTPOL_BENCH_BIG=PODS/POLICIES/NAMESPACES`, default 100000/10000/5000;
/// `none`: no big cluster.
fn big_spec() -> Option<SynthSpec> {
    let text = std::env::var("NFTPOL_BENCH_BIG").unwrap_or_else(|_| "100000/10000/5000".into());
    if text == "none" {
        return None;
    }
    let n: Vec<usize> = text
        .split('/')
        .map(|x| {
            x.trim()
                .parse()
                .expect("NFTPOL_BENCH_BIG=PODS/POLICIES/NAMESPACES")
        })
        .collect();
    assert_eq!(n.len(), 3, "NFTPOL_BENCH_BIG=PODS/POLICIES/NAMESPACES");
    Some(SynthSpec {
        node: NODE.into(),
        ..SynthSpec::new(n[0], n[1], n[2])
    })
}

// ---------------------------------------------------------------------------
// The cluster: a devserver with a synthetic cluster loaded over HTTP.

struct Cluster {
    server: Handle,
    kubeconfig: PathBuf,
    /// resourceVersion after the load.
    rv: u64,
    load_time: Duration,
    objects: usize,
    first_sync: Duration,
}

impl Cluster {
    fn start(
        runtime: &tokio::runtime::Runtime,
        spec: &SynthSpec,
        dir: &TempDir,
        label: &str,
    ) -> Self {
        eprintln!("== {label}: {spec:?}");
        let config = Config {
            namespaces: Vec::new(),
            ..Config::default()
        };
        let server = runtime
            .block_on(DevServer::start(config))
            .expect("devserver starts");
        let kubeconfig = dir.0.join(format!("kubeconfig-{label}"));
        std::fs::write(&kubeconfig, server.kubeconfig()).expect("write kubeconfig");
        let snap = synth_cluster(spec);
        let t = Instant::now();
        let objects = load(server.addr, &snap);
        let load_time = t.elapsed();
        let rv = server.resource_version();
        eprintln!(
            "   loaded {objects} objects in {:.1?} ({:.0}/s), rv {rv}",
            load_time,
            objects as f64 / load_time.as_secs_f64()
        );
        Self {
            server,
            kubeconfig,
            rv,
            load_time,
            objects,
            first_sync: Duration::ZERO,
        }
    }

    fn first_sync(&mut self, ctl: &Controller) {
        let t = Instant::now();
        ctl.wait_synced(self.rv, Duration::from_secs(600));
        self.first_sync = t.elapsed();
        eprintln!("   first sync {:.2?} after start", self.first_sync);
    }

    fn stop(self, runtime: &tokio::runtime::Runtime) {
        runtime.block_on(self.server.shutdown());
    }
}

/// Creates every object of `snap` (namespaces first), over a few kept-alive
/// connections. Returns the number of objects.
fn load(addr: SocketAddr, snap: &Snapshot) -> usize {
    enum Job<'a> {
        Pod(&'a PodInfo),
        Policy(&'a NetworkPolicy),
    }
    let nss: Vec<(String, Value)> = snap
        .namespaces
        .values()
        .map(|ns| ("/api/v1/namespaces".to_string(), namespace_object(ns)))
        .collect();
    let mut jobs: Vec<Job> = snap.pods.iter().map(|p| Job::Pod(p)).collect();
    jobs.extend(snap.policies.iter().map(|p| Job::Policy(p)));
    let threads = 4;
    let run = |n: usize, f: &(dyn Fn(usize) -> (String, Value) + Sync)| {
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    let mut http = Http::new(addr);
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let (path, obj) = f(i);
                        let body = serde_json::to_vec(&obj).expect("serialize");
                        let (code, resp) = http
                            .request("POST", &path, Some("application/json"), &body)
                            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
                        // 409: a retried request that had gone through.
                        if !(200..300).contains(&code) && code != 409 {
                            panic!("POST {path}: {code} {}", String::from_utf8_lossy(&resp));
                        }
                    }
                });
            }
        });
    };
    run(nss.len(), &|i| nss[i].clone());
    run(jobs.len(), &|i| match jobs[i] {
        Job::Pod(p) => (
            format!("/api/v1/namespaces/{}/pods", p.key.namespace),
            pod_object(p),
        ),
        Job::Policy(p) => (
            format!(
                "/apis/networking.k8s.io/v1/namespaces/{}/networkpolicies",
                p.metadata.namespace.as_deref().unwrap_or_default()
            ),
            policy_object(p),
        ),
    });
    nss.len() + jobs.len()
}

// ---------------------------------------------------------------------------
// Changes.

/// One API write.
#[derive(Clone, Debug)]
struct Write_ {
    /// The kind written ([`PODS`], [`NAMESPACES`], [`POLICIES`]): `/status`
    /// reports per kind how far changes are enforced.
    kind: &'static str,
    method: &'static str,
    path: String,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Write_ {
    fn create_pod(p: &PodInfo) -> Self {
        Self {
            kind: PODS,
            method: "POST",
            path: format!("/api/v1/namespaces/{}/pods", p.key.namespace),
            content_type: "application/json",
            body: serde_json::to_vec(&pod_object(p)).expect("serialize"),
        }
    }

    fn create_policy(p: &NetworkPolicy) -> Self {
        Self {
            kind: POLICIES,
            method: "POST",
            path: format!(
                "/apis/networking.k8s.io/v1/namespaces/{}/networkpolicies",
                p.metadata.namespace.as_deref().unwrap_or_default()
            ),
            content_type: "application/json",
            body: serde_json::to_vec(&policy_object(p)).expect("serialize"),
        }
    }

    fn delete(kind: &'static str, path: String) -> Self {
        Self {
            kind,
            method: "DELETE",
            path,
            content_type: "application/json",
            body: Vec::new(),
        }
    }

    fn merge_labels(kind: &'static str, path: String, labels: &BTreeMap<String, String>) -> Self {
        Self {
            kind,
            method: "PATCH",
            path,
            content_type: "application/merge-patch+json",
            body: serde_json::to_vec(&json!({"metadata": {"labels": labels}})).expect("serialize"),
        }
    }
}

struct Scenario {
    name: &'static str,
    /// The change, timed.
    write: Write_,
    /// Its reversal, untimed (waited for), so that every repetition starts
    /// from the same cluster.
    undo: Write_,
    /// The cluster before and after the change (for the in-process phases).
    before: Snapshot,
    after: Snapshot,
}

fn build_scenarios(snap: &Snapshot, spec: &SynthSpec) -> Vec<Scenario> {
    let t = Instant::now();
    let mut out = Vec::new();

    // (a) A new replica, on node-1, of a pod that policies isolate.
    let added = with_local_pod_added(snap, spec);
    let pod = added.pods.last().expect("a pod was added");
    out.push(Scenario {
        name: "(a) pod added on node-1",
        write: Write_::create_pod(pod),
        undo: Write_::delete(
            PODS,
            format!(
                "/api/v1/namespaces/{}/pods/{}",
                pod.key.namespace, pod.key.name
            ),
        ),
        before: snap.clone(),
        after: added.clone(),
    });

    // (b) A node-1 pod moved to another app of its namespace.
    let relabeled = with_pod_relabeled(snap, spec);
    let (old, new) = snap
        .pods
        .iter()
        .zip(&relabeled.pods)
        .find(|(a, b)| a != b)
        .expect("one pod changed");
    let path = format!(
        "/api/v1/namespaces/{}/pods/{}",
        old.key.namespace, old.key.name
    );
    out.push(Scenario {
        name: "(b) node-1 pod relabelled",
        write: Write_::merge_labels(PODS, path.clone(), &new.labels.to_map()),
        undo: Write_::merge_labels(PODS, path, &old.labels.to_map()),
        before: snap.clone(),
        after: relabeled.clone(),
    });

    // (c) A new policy selecting node-1 pods.
    let with_policy = with_policy_added(snap, spec);
    let policy = with_policy.policies.last().expect("a policy was added");
    let ns = policy.metadata.namespace.as_deref().unwrap_or_default();
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    out.push(Scenario {
        name: "(c) policy added",
        write: Write_::create_policy(policy),
        undo: Write_::delete(
            POLICIES,
            format!("/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/{name}"),
        ),
        before: snap.clone(),
        after: with_policy.clone(),
    });

    // (d) A namespace moved to another team, into or out of a peer set of
    // node-1's policies.
    let (moved, name) = namespace_change(snap);
    let path = format!("/api/v1/namespaces/{name}");
    out.push(Scenario {
        name: "(d) namespace relabelled",
        write: Write_::merge_labels(NAMESPACES, path.clone(), &moved.namespaces[&name].labels),
        undo: Write_::merge_labels(NAMESPACES, path, &snap.namespaces[&name].labels),
        before: snap.clone(),
        after: moved,
    });
    eprintln!("   changes prepared in {:.1?}", t.elapsed());
    out
}

/// A tenant namespace relabelled (`team`) so that node-1's rules change:
/// the namespace joins or leaves a peer set of a policy that selects
/// node-1 pods. (`synth::with_namespace_relabeled` may pick a namespace no
/// policy of node-1 cares about.)
fn namespace_change(snap: &Snapshot) -> (Snapshot, String) {
    let base = render(&compile(snap, NODE).plan, TABLE);
    let plan = compile(snap, NODE).plan;
    let local: std::collections::BTreeSet<String> = plan
        .policies
        .keys()
        .map(|id| id.policy.to_string())
        .collect();
    // Teams that namespaceSelectors of node-1's policies name.
    let mut named = std::collections::BTreeSet::new();
    for p in &snap.policies {
        let key = format!(
            "{}/{}",
            p.metadata.namespace.as_deref().unwrap_or_default(),
            p.metadata.name.as_deref().unwrap_or_default()
        );
        if local.contains(&key) {
            nftpol_lab::synth::collect_team_selectors(
                &serde_json::to_value(p.as_ref()).expect("serialize"),
                &mut named,
            );
        }
    }
    let teams: std::collections::BTreeSet<&String> = snap
        .namespaces
        .values()
        .filter_map(|ns| ns.labels.get("team"))
        .collect();
    let with_pods: std::collections::BTreeSet<&str> =
        snap.pods.iter().map(|p| &*p.key.namespace).collect();
    let mut tried = 0;
    for ns in snap.namespaces.values() {
        if !with_pods.contains(ns.name.as_str()) || tried > 40 {
            continue;
        }
        let Some(team) = ns.labels.get("team") else {
            continue;
        };
        // Into a named team, or out of one.
        let target = if named.contains(team) {
            teams.iter().find(|t| !named.contains(**t))
        } else {
            named.iter().next().and_then(|n| teams.get(n))
        };
        let Some(target) = target else { continue };
        tried += 1;
        let mut moved = snap.clone();
        let mut info = ns.clone();
        info.labels.insert("team".into(), (*target).clone());
        moved.add_namespace(info);
        let rs = render(&compile(&moved, NODE).plan, TABLE);
        if ops::diff(&base, &rs).is_none_or(|c| !c.ops.is_empty()) {
            return (moved, ns.name.clone());
        }
    }
    panic!("no namespace relabel changes node-1's rules");
}

struct ScenarioResult {
    name: &'static str,
    latencies: Vec<Duration>,
    /// The API write alone (request to response).
    writes: Vec<Duration>,
    /// The controller's syncs during the scenario (from its log).
    syncs: Vec<LoggedSync>,
    /// CPU used and waited for by the controller during the scenario.
    sched: Sched,
}

impl ScenarioResult {
    fn pct(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// What the scenarios drive: the API (its writes), the controller (its
/// `/status`, log and scheduler accounting).
struct Driver<'a> {
    api: Http,
    status: Http,
    ctl: &'a Controller,
    server: &'a Handle,
    poll: Duration,
    /// End of the controller log read so far.
    cursor: u64,
}

impl Driver<'_> {
    /// `reps` times: the change (timed), then its reversal (untimed), each
    /// after a pause of [`SPACING`].
    fn run(&mut self, sc: &Scenario, reps: usize) -> ScenarioResult {
        let mut latencies = Vec::new();
        let mut writes = Vec::new();
        let mut syncs = Vec::new();
        let mut sched = Sched::default();
        for _ in 0..reps {
            std::thread::sleep(SPACING);
            // What the reversal logged is not ours.
            self.cursor = self.ctl.log_syncs(self.cursor).0;
            let s0 = self.ctl.sched();
            let (lat, write) = self.write_and_wait(&sc.write);
            latencies.push(lat);
            writes.push(write);
            // The controller logs a sync just after it updates /status.
            std::thread::sleep(SPACING);
            let (end, logged) = self.ctl.log_syncs(self.cursor);
            self.cursor = end;
            syncs.extend(logged.into_iter().filter(|s| !s.full));
            sched = sched.plus(&self.ctl.sched().minus(&s0));
            self.write_and_wait(&sc.undo);
        }
        ScenarioResult {
            name: sc.name,
            latencies,
            writes,
            syncs,
            sched,
        }
    }

    /// One write, then `/status` every poll period until it is enforced.
    /// Returns (write to enforced, the write's own request time).
    fn write_and_wait(&mut self, w: &Write_) -> (Duration, Duration) {
        let t0 = Instant::now();
        let (code, body) = self
            .api
            .request(w.method, &w.path, Some(w.content_type), &w.body)
            .unwrap_or_else(|e| panic!("{} {}: {e}", w.method, w.path));
        let write = t0.elapsed();
        assert!(
            (200..300).contains(&code),
            "{} {}: {code} {}",
            w.method,
            w.path,
            String::from_utf8_lossy(&body)
        );
        // A delete answers with a Status: then the server's version, which
        // nothing else moves meanwhile.
        let rv: u64 = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|obj| {
                obj.pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
            })
            .unwrap_or_else(|| self.server.resource_version());
        let deadline = t0 + Duration::from_secs(30);
        loop {
            if let Some(st) = self.ctl.status(&mut self.status)
                && st.enforced(w.kind, rv)
            {
                return (t0.elapsed(), write);
            }
            if Instant::now() > deadline {
                panic!(
                    "{} {} (rv {rv}) not enforced after 30 s; controller log:\n{}",
                    w.method,
                    w.path,
                    self.ctl.log_tail(30)
                );
            }
            std::thread::sleep(self.poll);
        }
    }
}

// ---------------------------------------------------------------------------
// In-process phases of one sync.

struct Phases {
    name: &'static str,
    /// The incremental compiler as the controller runs it: the change's
    /// objects fed in, then the whole plan compiled.
    compile: Duration,
    /// A compilation from scratch of the same cluster, for comparison.
    compile_fresh: Duration,
    render: Duration,
    /// ops::diff + json::batch + serde_json::to_vec.
    diff: Duration,
    /// `ip netns exec NS nft -j -f -` of that batch, against the loaded table.
    exec: Duration,
    /// The same batch over a netlink socket in the namespace, when it only
    /// updates elements (what the controller does then).
    netlink: Option<Duration>,
    commands: usize,
    bytes: usize,
}

/// The store changes that turn the objects of `a` into those of `b`.
fn delta(a: &Snapshot, b: &Snapshot) -> Delta {
    fn diff<K: Ord + Clone, T: PartialEq>(
        a: BTreeMap<K, Arc<T>>,
        b: BTreeMap<K, Arc<T>>,
    ) -> Changes<K, T> {
        let mut out: Vec<(K, Option<Arc<T>>)> = b
            .iter()
            .filter(|(k, v)| a.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        out.extend(
            a.keys()
                .filter(|k| !b.contains_key(*k))
                .map(|k| (k.clone(), None)),
        );
        Changes::Some(out)
    }
    let pods = |s: &Snapshot| s.pods.iter().map(|p| (p.key.clone(), p.clone())).collect();
    let nss = |s: &Snapshot| {
        s.namespaces
            .iter()
            .map(|(k, v)| (k.clone(), Arc::new(v.clone())))
            .collect()
    };
    let pols = |s: &Snapshot| {
        s.policies
            .iter()
            .map(|p| (policy_key(p), Arc::new(PolicyObject::new(p))))
            .collect()
    };
    Delta {
        pods: diff(pods(a), pods(b)),
        namespaces: diff(nss(a), nss(b)),
        policies: diff(pols(a), pols(b)),
    }
}

/// For each scenario's first change: the phases of the sync it causes,
/// against a scratch namespace holding the table before the change.
fn phases(scenarios: &[Scenario], nft: &Nft, mut nl: Netlink, runs: usize) -> Vec<Phases> {
    let mut out = Vec::new();
    let mut syncer = Syncer::new(nft.clone(), TABLE);
    for sc in scenarios {
        let before = render(&compile(&sc.before, NODE).plan, TABLE);
        syncer.force_full();
        syncer.sync(before.clone()).expect("full sync (scratch)");
        // As the controller holds it: loaded, compiled once, then the
        // change in and the plan out; the reversal (untimed) after each.
        let mut inc = Some(Incremental::from_snapshot(&sc.before, NODE));
        inc.as_mut().expect("a compiler").compile();
        let mut times = Vec::new();
        for _ in 0..runs.max(7) {
            let forward = delta(&sc.before, &sc.after);
            let back = delta(&sc.after, &sc.before);
            let t = Instant::now();
            let mut c = forward.apply(inc.take(), NODE);
            std::hint::black_box(c.compile());
            times.push(t.elapsed());
            let mut c = back.apply(Some(c), NODE);
            c.compile();
            inc = Some(c);
        }
        let compile_t = median(times);
        let compile_fresh = median_of(runs, || {
            std::hint::black_box(compile(&sc.after, NODE));
        });
        let plan = compile(&sc.after, NODE).plan;
        // Rendered as the controller does: by a renderer that rendered the
        // plan before the change, from the same incremental compiler (whose
        // unchanged sets are the same `Arc`s, so unchanged pods are reused).
        let mut shared = Incremental::from_snapshot(&sc.before, NODE);
        let plan_before = shared.compile().plan;
        let mut shared = delta(&sc.before, &sc.after).apply(Some(shared), NODE);
        let plan_after = shared.compile().plan;
        let mut times = Vec::new();
        for _ in 0..runs.max(7) {
            let mut r = Renderer::default();
            r.render(&plan_before, TABLE);
            let t = Instant::now();
            std::hint::black_box(r.render(&plan_after, TABLE));
            times.push(t.elapsed());
        }
        let render_t = median(times);
        let want = render(&plan, TABLE);
        let mut body = Vec::new();
        let mut commands = 0;
        let diff_t = median_of(runs, || {
            let change = ops::diff(&before, &want).expect("incremental diff");
            commands = change.ops.len();
            body = serde_json::to_vec(&json::batch(TABLE, &change.ops)).expect("serialize");
        });
        let change = ops::diff(&before, &want).expect("diff");
        let doc = json::batch(TABLE, &change.ops);
        let undo = json::batch(
            TABLE,
            &ops::diff_exact(&change.applied, &before)
                .expect("reverse diff")
                .ops,
        );
        let mut execs = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            nft.apply_json(TABLE, &doc).expect("nft (diff)");
            execs.push(t.elapsed());
            nft.apply_json(TABLE, &undo).expect("nft (undo)");
        }
        let undo_ops = ops::diff_exact(&change.applied, &before)
            .expect("reverse diff")
            .ops;
        let netlink_t = (netlink::carries(&change.ops) && netlink::carries(&undo_ops)).then(|| {
            let mut times = Vec::new();
            for _ in 0..runs.max(7) {
                let t = Instant::now();
                nl.apply(&change.applied, &change.ops)
                    .expect("netlink (diff)");
                times.push(t.elapsed());
                nl.apply(&before, &undo_ops).expect("netlink (undo)");
            }
            median(times)
        });
        out.push(Phases {
            name: sc.name,
            netlink: netlink_t,
            compile: compile_t,
            compile_fresh,
            render: render_t,
            diff: diff_t,
            exec: median(execs),
            commands,
            bytes: body.len(),
        });
    }
    out
}

// ---------------------------------------------------------------------------
// The controller process.

#[derive(Clone, Copy, Debug, Default)]
struct Mem {
    rss_kib: u64,
    hwm_kib: u64,
    anon_kib: u64,
}

/// Scheduler accounting of the controller: its threads' time on a CPU and
/// waiting for one (`/proc/PID/task/*/schedstat`), and the CPU time of the
/// children it has waited for (`ip netns exec … nft`; `/proc/PID/stat`,
/// cutime + cstime, in clock ticks of 10 ms: coarse, fine over 50 syncs).
#[derive(Clone, Copy, Debug, Default)]
struct Sched {
    cpu: Duration,
    wait: Duration,
    children_cpu: Duration,
}

impl Sched {
    fn plus(&self, other: &Sched) -> Sched {
        Sched {
            cpu: self.cpu + other.cpu,
            wait: self.wait + other.wait,
            children_cpu: self.children_cpu + other.children_cpu,
        }
    }

    fn minus(&self, before: &Sched) -> Sched {
        Sched {
            cpu: self.cpu.saturating_sub(before.cpu),
            wait: self.wait.saturating_sub(before.wait),
            children_cpu: self.children_cpu.saturating_sub(before.children_cpu),
        }
    }
}

#[derive(Clone, Debug)]
struct LoggedSync {
    full: bool,
    commands: usize,
    elapsed: Duration,
}

struct Controller {
    child: Child,
    status_addr: SocketAddr,
    log: PathBuf,
}

impl Controller {
    fn start(bin: &Path, ns: &Netns, kubeconfig: &Path, log: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let status_addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log_file = std::fs::File::create(log).expect("controller log");
        let args = [
            "run",
            "--node-name",
            NODE,
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--metrics-addr",
            &status_addr.to_string(),
            "--netns",
            ns.name(),
            "--changes-via",
            &changes_via(),
            "--min-sync-interval",
            MIN_SYNC_INTERVAL,
            // No periodic full resync inside the measurement.
            "--resync-period",
            "1h",
        ]
        .map(String::from);
        eprintln!("   {} {}", bin.display(), shell_words(&args));
        let child = Command::new(bin)
            .args(&args)
            .env("RUST_LOG", "info,nftpol=debug")
            .env("NFTPOL_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start the controller");
        Self {
            child,
            status_addr,
            log: log.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The controller's `/status`, or `None` while it does not answer.
    fn status(&self, http: &mut Http) -> Option<SyncStatus> {
        let (code, body) = http.request("GET", "/status", None, b"").ok()?;
        if code != 200 {
            return None;
        }
        serde_json::from_slice(&body).ok()
    }

    fn wait_synced(&self, rv: u64, timeout: Duration) {
        let mut http = Http::new(self.status_addr);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.status(&mut http)
                && st.synced_resource_version >= rv
            {
                return;
            }
            let exited = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
                .map_or(true, |s| s.contains(") Z "));
            if exited || Instant::now() > deadline {
                panic!(
                    "controller {} before syncing rv {rv}; log:\n{}",
                    if exited { "exited" } else { "timed out" },
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn mem(&self) -> Mem {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("controller /proc status");
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|x| x.parse().ok())
                .unwrap_or(0)
        };
        Mem {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            anon_kib: field("RssAnon:"),
        }
    }

    fn sched(&self) -> Sched {
        let mut out = Sched::default();
        let tasks = format!("/proc/{}/task", self.pid());
        for entry in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path().join("schedstat")).unwrap_or_default();
            let f: Vec<u64> = text
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if f.len() >= 2 {
                out.cpu += Duration::from_nanos(f[0]);
                out.wait += Duration::from_nanos(f[1]);
            }
        }
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): state is field 3.
        if let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // cutime and cstime are fields 16 and 17 (1-based), i.e. 13 and 14 here.
            let ticks: u64 = [13, 14]
                .iter()
                .filter_map(|i| f.get(*i).and_then(|x| x.parse::<u64>().ok()))
                .sum();
            out.children_cpu = Duration::from_millis(ticks * 10);
        }
        out
    }

    fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Syncs logged from byte `from` on; returns the end of the last whole line.
    fn log_syncs(&self, from: u64) -> (u64, Vec<LoggedSync>) {
        let mut f = std::fs::File::open(&self.log).expect("controller log");
        let mut text = String::new();
        let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(from));
        let _ = f.read_to_string(&mut text);
        let whole = text.rfind('\n').map_or(0, |i| i + 1);
        let mut out = Vec::new();
        for line in text[..whole].lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let fields = &v["fields"];
            let msg = fields["message"].as_str().unwrap_or_default();
            let Some(elapsed) = fields["elapsed_ms"].as_f64() else {
                continue;
            };
            let full = msg.starts_with("replaced table");
            if !full && msg != "applied changes" {
                continue;
            }
            out.push(LoggedSync {
                full,
                commands: fields["commands"].as_u64().unwrap_or(0) as usize,
                elapsed: Duration::from_secs_f64(elapsed / 1e3),
            });
        }
        (from + whole as u64, out)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.contains(' ') {
                format!("\"{a}\"")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------------
// A minimal HTTP/1.1 client: one kept-alive connection, Content-Length or
// chunked bodies. (No client library in the dependencies does blocking
// requests, and polling wants a plain socket.)

struct Http {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl Http {
    fn new(addr: SocketAddr) -> Self {
        Self { addr, conn: None }
    }

    fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        // A kept-alive connection the server closed: retry once on a new one.
        let reused = self.conn.is_some();
        match self.try_request(method, path, content_type, body) {
            Err(_) if reused => {
                self.conn = None;
                self.try_request(method, path, content_type, body)
            }
            other => other,
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(120)))?;
            self.conn = Some(BufReader::with_capacity(64 << 10, s));
        }
        let result = (|| {
            let conn = self.conn.as_mut().expect("connected");
            let mut head = format!(
                "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nContent-Length: {}\r\n",
                self.addr,
                body.len()
            );
            if let Some(ct) = content_type {
                let _ = write!(head, "Content-Type: {ct}\r\n");
            }
            head.push_str("\r\n");
            let mut msg = head.into_bytes();
            msg.extend_from_slice(body);
            conn.get_mut().write_all(&msg)?;
            read_response(conn)
        })();
        match result {
            Ok((code, body, close)) => {
                if close {
                    self.conn = None;
                }
                Ok((code, body))
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// (status, body, connection closes).
fn read_response(conn: &mut BufReader<TcpStream>) -> std::io::Result<(u16, Vec<u8>, bool)> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let (mut len, mut chunked, mut close) = (None, false, false);
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(bad("headers cut short"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => len = v.parse::<usize>().ok(),
            "transfer-encoding" => chunked = v.contains("chunked"),
            "connection" => close = v.contains("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            conn.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    line.clear();
                    if conn.read_line(&mut line)? == 0 || line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            conn.read_exact(&mut body[start..])?;
            line.clear();
            conn.read_line(&mut line)?;
        }
    } else if let Some(n) = len {
        body.resize(n, 0);
        conn.read_exact(&mut body)?;
    } else {
        conn.read_to_end(&mut body)?;
        close = true;
    }
    Ok((code, body, close))
}

// ---------------------------------------------------------------------------
// Kernel access, namespaces, temporary files.

/// `Ok` when this process may create namespaces and run nft.
fn kernel_access() -> Result<(), String> {
    nftpol_lab::lab::unavailable().map_or(Ok(()), Err)
}

/// A directory for kubeconfigs and logs, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Self {
        let dir = std::env::temp_dir().join(format!("nftpol-cbench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("NFTPOL_BENCH_KEEP_LOGS").is_some() {
            eprintln!("logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

// ---------------------------------------------------------------------------
// NFTPOL_BENCH_PROFILE=mem[:10k|:big]: where the controller's memory goes,
// in-process, with the controller's own code (stores, snapshot, compile,
// render, batch) and a counting allocator. No root needed.

unsafe extern "C" {
    /// glibc: gives free memory back to the kernel.
    fn malloc_trim(pad: usize) -> i32;
}

#[derive(Clone, Copy)]
struct Heap {
    live: usize,
    chunks: usize,
    allocs: usize,
}

fn heap() -> Heap {
    Heap {
        live: LIVE.load(Ordering::Relaxed),
        chunks: CHUNKS.load(Ordering::Relaxed),
        allocs: ALLOCS.load(Ordering::Relaxed),
    }
}

fn reset_peak() -> usize {
    let now = LIVE.load(Ordering::Relaxed);
    PEAK.store(now, Ordering::Relaxed);
    now
}

fn self_rss_kib() -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|x| x.parse().ok())
        .unwrap_or(0)
}

fn mb(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `NFTPOL_BENCH_PROFILE=batches:DIR`: writes the 10k cluster's full batch
/// and, per scenario, the change's and its reversal's batches, as
/// `nft -j -f` reads them (to time nft apart: `ip netns exec NS nft -j -f FILE`).
fn dump_batches(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create the directory");
    let spec = SynthSpec {
        node: NODE.into(),
        ..SynthSpec::new(10_000, 1_000, 500)
    };
    let snap = synth_cluster(&spec);
    let write = |name: &str, doc: &Value| {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_vec(doc).expect("serialize")).expect("write");
        eprintln!("{}", path.display());
    };
    let base = render(&compile(&snap, NODE).plan, TABLE);
    write("full.json", &json::batch(TABLE, &ops::full(&base)));
    for (i, sc) in build_scenarios(&snap, &spec).iter().enumerate() {
        let after = render(&compile(&sc.after, NODE).plan, TABLE);
        let tag = (b'a' + i as u8) as char;
        let change = ops::diff(&base, &after).expect("diff");
        let undo = ops::diff_exact(&change.applied, &base).expect("diff");
        write(
            &format!("{tag}-change.json"),
            &json::batch(TABLE, &change.ops),
        );
        write(&format!("{tag}-undo.json"), &json::batch(TABLE, &undo.ops));
    }
}

fn profile(what: &str) {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use nftpol::watch::Stores;

    if let Some(dir) = what.strip_prefix("batches:") {
        return dump_batches(Path::new(dir));
    }
    let (what, size) = what.split_once(':').unwrap_or((what, "big"));
    assert_eq!(
        what, "mem",
        "NFTPOL_BENCH_PROFILE=mem[:10k|:big] or batches:DIR"
    );
    let spec = match size {
        "10k" => SynthSpec {
            node: NODE.into(),
            ..SynthSpec::new(10_000, 1_000, 500)
        },
        _ => big_spec().expect("NFTPOL_BENCH_BIG is not none"),
    };
    eprintln!("== memory, in-process: {spec:?}");
    let snap = synth_cluster(&spec);
    let n = snap.pods.len();
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut row = |name: &str, bytes: usize, chunks: usize, allocs: usize, note: String| {
        rows.push(vec![
            name.to_string(),
            mb(bytes),
            mb(chunks),
            allocs.to_string(),
            format!("{} B", chunks / n.max(1)),
            note,
        ]);
    };

    // The pod list as one body: the devserver ignores `limit`, so every pod
    // comes in one page.
    let list = |kind: &str, items: Vec<Value>| {
        serde_json::to_vec(&json!({
            "kind": kind, "apiVersion": "v1",
            "metadata": {"resourceVersion": "1"},
            "items": items,
        }))
        .expect("serialize")
    };
    let stores = Stores::default();
    let hp = heap();
    let body = list("PodList", snap.pods.iter().map(|p| pod_object(p)).collect());
    let body_len = body.len();
    let hb = heap();
    reset_peak();
    // As the controller's list: each item trimmed (labels and ports shared)
    // as soon as it is parsed, then the store replaced, then the body dropped.
    let mut items = BTreeMap::new();
    nftpol::watch::list::read_list(&body[..], &mut items, |p: &Pod| stores.pods.trim(p))
        .expect("a PodList");
    stores.pods.replace_trimmed(items, 1);
    drop(body);
    let peak_list = PEAK.load(Ordering::Relaxed) - hp.live;
    let h1 = heap();
    row(
        "pods list: JSON body (one page)",
        hb.live - hp.live,
        hb.chunks - hp.chunks,
        hb.allocs - hp.allocs,
        format!("{} of JSON", mb(body_len)),
    );
    row(
        "pods list: peak (body + store as it fills)",
        peak_list,
        0,
        0,
        "bytes asked for at the worst moment".into(),
    );
    row(
        "pods store (Arc<PodInfo> in a BTreeMap, shared labels), kept",
        h1.live - hp.live,
        h1.chunks - hp.chunks,
        h1.allocs - hp.allocs,
        format!("{n} pods"),
    );
    let nss: Vec<Namespace> = snap
        .namespaces
        .values()
        .map(|ns| serde_json::from_value(namespace_object(ns)).expect("a Namespace"))
        .collect();
    stores.namespaces.replace(&nss, 1);
    drop(nss);
    let h2 = heap();
    row(
        "namespaces store, kept",
        h2.live - h1.live,
        h2.chunks - h1.chunks,
        h2.allocs - h1.allocs,
        format!("{} namespaces", snap.namespaces.len()),
    );
    let pols: Vec<NetworkPolicy> = snap
        .policies
        .iter()
        .map(|p| serde_json::from_value(policy_object(p)).expect("a policy"))
        .collect();
    stores.policies.replace(&pols, 1);
    drop(pols);
    let h3 = heap();
    row(
        "policies store (PolicyObject: validated, selectors shared), kept",
        h3.live - h2.live,
        h3.chunks - h2.chunks,
        h3.allocs - h2.allocs,
        format!("{} policies", snap.policies.len()),
    );

    // One full sync, as the controller's first: the compiler built from
    // the stores, compile, render, the full batch.
    let base = reset_peak();
    let t = Instant::now();
    let mut inc = stores.take_changes().apply(None, NODE);
    let c = inc.compile();
    let t_compile = t.elapsed();
    drop(c);
    let hc = heap();
    row(
        "incremental compiler (indexes, parsed policies, cached sets), kept",
        hc.live - h3.live,
        hc.chunks - h3.chunks,
        hc.allocs - h3.allocs,
        String::new(),
    );
    let c = inc.compile();
    // Kept between syncs, as the controller keeps it.
    let mut renderer = Renderer::default();
    let rs = renderer.render(&c.plan, TABLE);
    let full_ops = ops::full(&rs);
    let doc = json::batch(TABLE, &full_ops);
    let bytes = serde_json::to_vec(&doc).expect("serialize");
    let peak_full = PEAK.load(Ordering::Relaxed) - base;
    let batch_len = bytes.len();
    drop((bytes, doc, full_ops, c));
    let h4 = heap();
    row(
        "applied ruleset (the Syncer's copy), kept",
        h4.live - hc.live,
        h4.chunks - hc.chunks,
        h4.allocs - hc.allocs,
        format!("{:?}", rs.stats()),
    );
    row(
        "peak of a full sync (compiler+compile+render+batch)",
        peak_full,
        0,
        0,
        format!(
            "JSON batch {}; compiler built + compile {}",
            mb(batch_len),
            ms(t_compile)
        ),
    );
    // One incremental sync (a pod added on the node).
    let added = with_local_pod_added(&snap, &spec);
    let change = delta(&snap, &added);
    let base = reset_peak();
    let t = Instant::now();
    let mut inc = change.apply(Some(inc), NODE);
    let c = inc.compile();
    let t_compile = t.elapsed();
    let p_compile = PEAK.load(Ordering::Relaxed) - base;
    let rs2 = renderer.render(&c.plan, TABLE);
    let p_render = PEAK.load(Ordering::Relaxed) - base;
    let d = ops::diff(&rs, &rs2).expect("diff");
    let p_diff = PEAK.load(Ordering::Relaxed) - base;
    let doc = json::batch(TABLE, &d.ops);
    let peak_incr = PEAK.load(Ordering::Relaxed) - base;
    eprintln!(
        "incremental peaks: change in + compile {}, + render {}, + diff {}, + batch {}; live after {}",
        mb(p_compile),
        mb(p_render),
        mb(p_diff),
        mb(peak_incr),
        mb(LIVE.load(Ordering::Relaxed) - base)
    );
    drop((doc, d, rs2, c, added));
    row(
        "peak of an incremental sync (a pod added)",
        peak_incr,
        0,
        0,
        format!("change in + compile {}", ms(t_compile)),
    );
    let rss = self_rss_kib();
    // SAFETY: glibc's malloc_trim only releases free memory.
    unsafe { malloc_trim(0) };
    let trimmed = self_rss_kib();

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nnftpol controller memory, in-process ({} pods / {} policies / {} namespaces, node {NODE})\n",
        spec.pods, spec.policies, spec.namespaces
    );
    table(
        &mut out,
        &[
            "what",
            "bytes asked for",
            "malloc chunks (est.)",
            "allocations",
            "chunks per pod",
            "note",
        ],
        &rows,
    );
    let _ = writeln!(
        out,
        "\nthis process: VmRSS {} before malloc_trim(0), {} after (it also holds the \
         synthetic snapshot, about one pods store's worth)",
        mib(rss),
        mib(trimmed),
    );
    print!("{out}");
}

// ---------------------------------------------------------------------------
// Statistics and output.

fn median_of(n: usize, mut f: impl FnMut()) -> Duration {
    median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

/// Nearest-rank percentile (`p` in 0..=1).
fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

struct Big {
    /// A plain GET of every pod from the devserver: time, bytes.
    list_time: (Duration, usize),
    spec: SynthSpec,
    load: (Duration, usize),
    first_sync: Duration,
    full_sync: Option<Duration>,
    first: Mem,
    after: Mem,
    incr: Vec<Duration>,
    stats: (usize, usize, usize),
}

#[derive(Default)]
struct Report {
    title: String,
    load_before: String,
    load_after: String,
    skipped: Option<String>,
    floor_list: Duration,
    floor_plain: Duration,
    floor_host: Duration,
    floor_noop: Duration,
    load_10k: (Duration, usize),
    first_sync_10k: Duration,
    full_sync_10k: Option<Duration>,
    rss_10k_first: Option<Mem>,
    rss_10k_after: Option<Mem>,
    scenarios: Vec<ScenarioResult>,
    phases: Vec<Phases>,
    big: Option<Big>,
}

impl Report {
    fn print(&self, quick: bool) {
        let mut out = String::new();
        let _ = writeln!(out, "\n{}\n", self.title);
        if let Some(why) = &self.skipped {
            let rows = vec![
                vec![
                    format!("API change → enforced, p99 (4 kinds)"),
                    format!("skipped ({why})"),
                ],
                vec![
                    "controller RSS, 10k and 100k pods".into(),
                    format!("skipped ({why})"),
                ],
            ];
            table(&mut out, &["target", "result"], &rows);
            print!("{out}");
            return;
        }
        let _ = writeln!(
            out,
            "10k cluster: 10k pods / 1k policies / 500 namespaces, 110 pods on {NODE}; \
             {} objects created in {:.1} s; first sync {:.0} ms after the controller started \
             (its full apply: {})",
            self.load_10k.1,
            self.load_10k.0.as_secs_f64(),
            self.first_sync_10k.as_secs_f64() * 1e3,
            self.full_sync_10k.map_or("?".into(), ms)
        );
        let _ = writeln!(
            out,
            "exec floor (medians of 20): `nft --version` {}; `nft list tables` (host) {}; \
             `ip netns exec NS nft list tables` {}; `ip netns exec NS nft -j -f -` of a no-op \
             batch on the loaded 10k table {}\n",
            ms(self.floor_plain),
            ms(self.floor_host),
            ms(self.floor_list),
            ms(self.floor_noop)
        );

        let mut rows = Vec::new();
        for r in &self.scenarios {
            let p99 = r.pct(0.99);
            let changed = r.syncs.iter().filter(|s| s.commands > 0).count();
            let sync_times: Vec<Duration> = r.syncs.iter().map(|s| s.elapsed).collect();
            let sync = if sync_times.is_empty() {
                "-".into()
            } else {
                format!(
                    "{} / {}",
                    ms(percentile(&sync_times, 0.5)),
                    ms(percentile(&sync_times, 0.99))
                )
            };
            rows.push(vec![
                r.name.to_string(),
                ms(r.pct(0.5)),
                ms(r.pct(0.9)),
                ms(p99),
                ms(r.pct(1.0)),
                ms(percentile(&r.writes, 0.5)),
                sync,
                format!("{changed}/{}", r.latencies.len()),
                [LATENCY_TARGET, LATENCY_TARGET_STRICT]
                    .map(|t| {
                        format!(
                            "{} (p99 ≤ {} ms)",
                            if p99 <= t { "PASS" } else { "MISS" },
                            t.as_millis()
                        )
                    })
                    .join(", "),
            ]);
        }
        table(
            &mut out,
            &[
                "API change → enforced (10k)",
                "p50",
                "p90",
                "p99",
                "max",
                "API write p50",
                "controller sync p50 / p99",
                "syncs with nft changes",
                "target",
            ],
            &rows,
        );

        out.push('\n');
        let rows: Vec<Vec<String>> = self
            .scenarios
            .iter()
            .map(|r| {
                let n = r.latencies.len().max(1) as u32;
                vec![
                    r.name.to_string(),
                    ms(r.sched.cpu / n),
                    ms(r.sched.children_cpu / n),
                    ms(r.sched.wait / n),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "per change, in the controller process (means)",
                "CPU of its threads",
                "CPU of ip + nft children",
                "its threads waiting for a CPU",
            ],
            &rows,
        );
        let _ = writeln!(
            out,
            "load average (1/5/15 min) before: {}, after: {} on {} CPUs",
            self.load_before,
            self.load_after,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );

        out.push('\n');
        let rows: Vec<Vec<String>> = self
            .phases
            .iter()
            .map(|p| {
                vec![
                    p.name.to_string(),
                    ms(p.compile),
                    ms(p.compile_fresh),
                    ms(p.render),
                    ms(p.diff),
                    ms(p.exec),
                    p.netlink.map_or("- (needs nft)".into(), ms),
                    ms(p.compile + p.render + p.diff + p.netlink.unwrap_or(p.exec)),
                    format!("{} / {} KiB", p.commands, p.bytes / 1024),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "one sync, in-process (medians)",
                "change in + compile",
                "(from scratch)",
                "render",
                "diff + batch",
                "nft exec (netns)",
                "netlink batch",
                "sum (netlink where it can)",
                "commands / batch",
            ],
            &rows,
        );

        out.push('\n');
        let mem_row = |name: String, m: Option<&Mem>, target: bool| -> Vec<String> {
            match m {
                None => vec![name, "-".into(), "-".into(), "-".into(), "-".into()],
                Some(m) => vec![
                    name,
                    mib(m.rss_kib),
                    mib(m.anon_kib),
                    mib(m.hwm_kib),
                    if target {
                        let mb = m.rss_kib as f64 * 1024.0 / 1e6;
                        format!(
                            "{} (VmRSS ≤ {} MiB), {} (≤ {} MB: {mb:.1} MB)",
                            if m.rss_kib <= RSS_TARGET_KIB {
                                "PASS"
                            } else {
                                "MISS"
                            },
                            RSS_TARGET_KIB / 1024,
                            if mb <= RSS_TARGET_STRICT_MB {
                                "PASS"
                            } else {
                                "MISS"
                            },
                            RSS_TARGET_STRICT_MB
                        )
                    } else {
                        "-".into()
                    },
                ],
            }
        };
        let mut rows = vec![
            mem_row(
                "10k, after the first sync".into(),
                self.rss_10k_first.as_ref(),
                false,
            ),
            mem_row(
                "10k, after the latency runs".into(),
                self.rss_10k_after.as_ref(),
                false,
            ),
        ];
        match &self.big {
            Some(b) => {
                let s = &b.spec;
                let shape = format!(
                    "{}k pods / {} pol / {} ns",
                    s.pods / 1000,
                    s.policies,
                    s.namespaces
                );
                rows.push(mem_row(
                    format!("{shape}, after the first sync"),
                    Some(&b.first),
                    true,
                ));
                rows.push(mem_row(
                    format!("{shape}, after 5 more syncs"),
                    Some(&b.after),
                    true,
                ));
            }
            None => rows.push(vec![
                "100k pods".into(),
                format!("skipped ({})", if quick { "quick" } else { "?" }),
                "-".into(),
                "-".into(),
                "-".into(),
            ]),
        }
        table(
            &mut out,
            &[
                "controller memory",
                "VmRSS",
                "RssAnon",
                "VmHWM (peak)",
                "target",
            ],
            &rows,
        );
        if let Some(b) = &self.big {
            let _ = writeln!(
                out,
                "\nbig cluster: {} objects created in {:.1} s; a plain GET of all pods takes {:.1} s \
                 ({:.0} MiB); first sync {:.1} s after the controller started (its full apply: {}); \
                 table: {} chains, {} rules, {} set elements; +1 node-1 pod → enforced: {}",
                b.load.1,
                b.load.0.as_secs_f64(),
                b.list_time.0.as_secs_f64(),
                b.list_time.1 as f64 / (1 << 20) as f64,
                b.first_sync.as_secs_f64(),
                b.full_sync.map_or("?".into(), ms),
                b.stats.0,
                b.stats.1,
                b.stats.2,
                b.incr.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
            );
        }
        print!("{out}");
    }
}
