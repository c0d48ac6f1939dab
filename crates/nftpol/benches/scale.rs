//! Scale benchmark (issue #5, part 1): compile, render and apply synthetic
//! clusters, then one change of each kind, applied incrementally.
//!
//! ```text
//! cargo bench --bench scale                          # 1k, 10k and 50k pods (a few minutes)
//! NFTPOL_BENCH_SIZES=1k,10k cargo bench --bench scale   # some sizes (or: -- --sizes 1k,10k)
//! NFTPOL_BENCH_SIZES=20000/2000/1000 cargo bench --bench scale   # pods/policies/namespaces
//! NFTPOL_BENCH_QUICK=1 cargo bench --bench scale     # 1k only, few runs (or: -- --quick)
//! NFTPOL_BENCH_PROFILE=compile cargo bench --bench scale  # one phase in a loop, for perf
//! NFTPOL_BENCH_PROFILE=plan cargo bench --bench scale     # the 10k node's sets and chains
//! ```
//!
//! Sizes: `1k` = 1k pods / 100 policies / 50 namespaces, `10k` = 10k / 1k /
//! 500, `50k` = 50k / 5k / 2500; always 110 pods on the measured node. For
//! each size: compile and render times, the rendered size, the full apply
//! (one `nft -j -f -` transaction replacing the table in a fresh network
//! namespace) phase by phase, and five changes (a local pod added, a remote
//! pod added, a local pod relabelled, a policy added, a namespace
//! relabelled), each measured twice:
//! - apply: [`Syncer::sync`] of the already rendered new ruleset (the diff
//!   against what was applied, and one nft transaction);
//! - end to end: compile + render + that sync, as one controller sync does
//!   (without the watch side; `benches/controller.rs` measures that).
//!
//! Then the growth factor of every figure between consecutive sizes.
//! The kernel parts run as root only, each size in its own fresh network
//! namespace (`ip netns add`), removed again on exit or panic. They run on
//! a thread inside that namespace, so `nft` is a plain child process as
//! under `nftpol run` (the `ip netns exec` wrapper costs a few ms more; its
//! floor is shown apart). `nft`'s CPU time is split into user (its parser,
//! JSON, cache) and system (netlink and the kernel's transaction); wall
//! time beyond both is waiting, for a CPU on a loaded machine or in the
//! kernel.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nftpol::compiler::{Snapshot, compile, parse_policies};
use nftpol::nft::transport::{json, netlink};
use nftpol::nft::{Netlink, NetlinkDiffs, Nft, Ruleset, Stats, Syncer, ops, render, to_text};
use nftpol_lab::lab::Netns;
use nftpol_lab::report::{loadavg, machine, median, table};
use nftpol_lab::synth::{
    SynthSpec, synth_cluster, with_local_pod_added, with_namespace_relabeled_for_node,
    with_pod_relabeled_for_node, with_policy_added, with_remote_pod_added,
};

const TABLE: &str = "nftpol";

// The bench's targets, for the 10k cluster (checked at every size; the
// verdict is printed next to each figure).
const COMPILE_TARGET: Duration = Duration::from_millis(50);
const FULL_TARGET: Duration = Duration::from_millis(300);
const INCR_TARGET: Duration = Duration::from_millis(20);

type Change = fn(&Snapshot, &SynthSpec) -> Snapshot;

/// The changes measured at every size, in output order.
const CHANGES: [(&str, Change); 5] = [
    ("+1 local pod", with_local_pod_added),
    ("+1 remote pod (peer sets only)", with_remote_pod_added),
    ("local pod relabelled", with_pod_relabeled_for_node),
    ("+1 policy", with_policy_added),
    ("namespace relabelled", |snap, spec| {
        with_namespace_relabeled_for_node(snap, spec).0
    }),
];

#[derive(Clone, Copy, Debug)]
struct Reps {
    compile: usize,
    full: usize,
    incr: usize,
    floor: usize,
}

impl Reps {
    /// Fewer runs for big clusters, so that 50k stays within a minute or two.
    fn for_size(pods: usize, quick: bool) -> Self {
        match (quick, pods) {
            (true, _) => Reps {
                compile: 5,
                full: 2,
                incr: 3,
                floor: 3,
            },
            (false, 0..=20_000) => Reps {
                compile: 15,
                full: 5,
                incr: 10,
                floor: 10,
            },
            (false, _) => Reps {
                compile: 7,
                full: 3,
                incr: 5,
                floor: 10,
            },
        }
    }
}

/// A named cluster size.
#[derive(Clone, Debug)]
struct Size {
    label: String,
    spec: SynthSpec,
}

impl Size {
    /// `1k`, `10k`, `50k`, or `PODS/POLICIES/NAMESPACES`.
    fn parse(s: &str) -> Result<Self, String> {
        let (pods, policies, namespaces) = match s {
            "1k" => (1_000, 100, 50),
            "10k" => (10_000, 1_000, 500),
            "50k" => (50_000, 5_000, 2_500),
            other => {
                let n: Vec<usize> = other
                    .split('/')
                    .map(|x| x.parse().map_err(|_| format!("bad size {other:?}")))
                    .collect::<Result<_, _>>()?;
                let [p, pol, ns] = n[..] else {
                    return Err(format!(
                        "bad size {other:?}: 1k, 10k, 50k or PODS/POLICIES/NAMESPACES"
                    ));
                };
                (p, pol, ns)
            }
        };
        let label = match s {
            "1k" | "10k" | "50k" => s.to_string(),
            _ => format!("{pods}"),
        };
        Ok(Size {
            label,
            spec: SynthSpec::new(pods, policies, namespaces),
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} pods / {} policies / {} namespaces",
            self.spec.pods, self.spec.policies, self.spec.namespaces
        )
    }
}

/// Sizes from `--sizes A,B` or `NFTPOL_BENCH_SIZES`; else 1k (quick) or
/// 1k, 10k and 50k.
fn chosen_sizes(quick: bool) -> Vec<Size> {
    let args: Vec<String> = std::env::args().collect();
    let from_args = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix("--sizes=").map(str::to_string))
        });
    let list = from_args
        .or_else(|| std::env::var("NFTPOL_BENCH_SIZES").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| if quick { "1k" } else { "1k,10k,50k" }.to_string());
    list.split(',')
        .map(|s| Size::parse(s.trim()).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

fn main() {
    let quick = std::env::var("NFTPOL_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
        || std::env::args().any(|a| a == "--quick");
    if let Ok(what) = std::env::var("NFTPOL_BENCH_PROFILE") {
        return profile_loop(&what);
    }
    let sizes = chosen_sizes(quick);
    let kernel = kernel_access();
    let load_before = loadavg();

    let mut cols = Vec::new();
    for size in &sizes {
        let reps = Reps::for_size(size.spec.pods, quick);
        eprintln!("== {}: {:?}", size.label, size.spec);
        cols.push(run_size(size, reps, kernel.is_ok()));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nnftpol scale benchmark{} — {} pods on the measured node, table inet {TABLE}",
        if quick { " (quick)" } else { "" },
        sizes.first().map_or(0, |s| s.spec.local_pods)
    );
    let _ = writeln!(
        out,
        "machine: {}; load average before: {load_before}, after: {}",
        machine(),
        loadavg()
    );
    for c in &cols {
        print_size(&mut out, c, kernel.as_ref().err());
    }
    if cols.len() > 1 {
        print_growth(&mut out, &cols);
    }
    print!("{out}");
}

/// `NFTPOL_BENCH_PROFILE=PHASE[-cold|-spawn|-batch][:SIZE]`, PHASE one of
/// `compile`, `compile-changed`, `parse`, `render`, `json`: runs one phase on
/// the 10k (or SIZE: 1k, 50k, P/POL/NS) cluster in a loop, for `perf record`.
/// `NFTPOL_BENCH_PROFILE=plan[:SIZE]` lists the rendered sets and chains.
fn profile_loop(what: &str) {
    let (what, size) = what.split_once(':').unwrap_or((what, "10k"));
    let spec = Size::parse(size).unwrap_or_else(|e| panic!("{e}")).spec;
    let snap = synth_cluster(&spec);
    let compiled = compile(&snap, &spec.node);
    let rs = render(&compiled.plan, TABLE);
    let full_ops = ops::full(&rs);
    if what == "plan" {
        // What the node gets: every set with its size, and the chains.
        let stats = rs.stats();
        println!("{stats:?}");
        for (name, set) in &rs.sets {
            println!("{:6}  {name}  {}", set.elements.len(), set.comment);
        }
        for (name, chain) in &rs.chains {
            println!("{:6}  chain {name}", chain.rules.len());
        }
        return;
    }
    let changed = with_local_pod_added(&snap, &spec);
    let n = 200;
    let mut busy = Duration::ZERO;
    for _ in 0..n {
        if what.ends_with("-cold") {
            // What a real sync does between compilations: other work that
            // evicts the caches (here: a 16 MiB sweep and a sleep).
            let junk = vec![1u8; 16 << 20];
            std::hint::black_box(junk.iter().map(|b| *b as u64).sum::<u64>());
            std::thread::sleep(Duration::from_millis(5));
        }
        if what.ends_with("-batch") {
            // As in a sync: build and drop a JSON batch first.
            let doc = json::batch(TABLE, &full_ops);
            std::hint::black_box(serde_json::to_vec(&doc).expect("serialize"));
        }
        if what.ends_with("-spawn") {
            // As in a sync: wait for a child process first.
            let _ = Command::new("nft").arg("--version").output();
        }
        let t = Instant::now();
        match what
            .trim_end_matches("-cold")
            .trim_end_matches("-spawn")
            .trim_end_matches("-batch")
        {
            "compile" => drop(std::hint::black_box(compile(&snap, &spec.node))),
            "compile-changed" => drop(std::hint::black_box(compile(&changed, &spec.node))),
            "parse" => drop(std::hint::black_box(parse_policies(&snap, &mut Vec::new()))),
            "render" => drop(std::hint::black_box(render(&compiled.plan, TABLE))),
            "json" => drop(std::hint::black_box(json::batch(TABLE, &full_ops))),
            other => panic!(
                "unknown phase {other:?} (compile, compile-changed, parse, render, json, or plan to list the sets; \
                 with -cold: caches evicted before each run, -spawn: a child process run, -batch: a full JSON batch built)"
            ),
        }
        busy += t.elapsed();
    }
    eprintln!("{what} ({size}): {:.2?} per run", busy / n);
}

/// Results of one size; `kernel` is `None` when skipped.
struct Col {
    size: Size,
    reps: Reps,
    synth: Duration,
    compile: Duration,
    compile_wait: Duration,
    render: Duration,
    stats: Stats,
    kernel: Option<KernelCol>,
}

struct KernelCol {
    floor: Duration,
    floor_wrapped: Duration,
    floor_plain: Duration,
    full: Duration,
    full_phases: FullPhases,
    text_load: Duration,
    /// One per [`CHANGES`] entry.
    changes: Vec<Incr>,
}

struct FullPhases {
    ops: Duration,
    json: Duration,
    serialize: Duration,
    /// `json::batch_bytes`: the batch as the syncer builds it.
    bytes_stream: Duration,
    exec: Duration,
    /// CPU of the nft process per run: user (parsing, JSON, its cache)
    /// and system (netlink, the kernel's transaction).
    exec_cpu: ChildCpu,
    bytes: usize,
    text_bytes: usize,
}

struct Incr {
    /// compile + render + sync.
    total: Duration,
    compile: Duration,
    compile_wait: Duration,
    render: Duration,
    /// `Syncer::sync` of the rendered ruleset: diff + batch + nft.
    sync: Duration,
    /// `ops::diff` + `json::batch` alone.
    diff: Duration,
    /// `nft -j -f -` of the same batch alone.
    exec: Duration,
    exec_cpu: ChildCpu,
    /// The same batch over netlink alone, when it only updates elements.
    netlink: Option<Duration>,
    commands: usize,
}

/// How long this thread has waited for a CPU so far (second field of
/// `/proc/thread-self/schedstat`, exact: it is added when the thread gets
/// a CPU again). On a shared machine, wall time minus this is what the
/// code itself cost. (The first field, time on CPU, is only updated at
/// scheduler ticks: too coarse here.)
fn runqueue_wait() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = text
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// A call's result and how long it waited for a CPU.
fn waited<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let w0 = runqueue_wait();
    let out = f();
    (runqueue_wait() - w0, out)
}

/// Runs `f` `n` times; the median of its durations.
fn timed<T>(n: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut times = Vec::with_capacity(n);
    let mut last = None;
    for _ in 0..n {
        let t = Instant::now();
        let out = f();
        times.push(t.elapsed());
        last = Some(out);
    }
    (median(times), last.expect("n > 0"))
}

fn run_size(size: &Size, reps: Reps, kernel: bool) -> Col {
    let spec = &size.spec;
    let t = Instant::now();
    let snap = synth_cluster(spec);
    let synth = t.elapsed();

    let mut compile_wait = Vec::new();
    let (compile_t, compiled) = timed(reps.compile, || {
        let (wait, c) = waited(|| compile(&snap, &spec.node));
        compile_wait.push(wait);
        c
    });
    let compile_wait = median(compile_wait);
    assert!(
        compiled.diagnostics.is_empty(),
        "{:?}",
        compiled.diagnostics
    );
    let (render_t, rs) = timed(reps.compile, || render(&compiled.plan, TABLE));
    let stats = rs.stats();
    eprintln!("   compile {compile_t:.2?}, render {render_t:.2?}, {stats:?}");

    let kernel = kernel.then(|| {
        let ns = Netns::create(&format!("bench-{}", size.label))
            .unwrap_or_else(|e| panic!("ip netns add: {e}"));
        // On a thread inside the namespace, so that `nft` runs there as
        // `nftpol run` runs it on a node: a plain child process, no
        // `ip netns exec` around it.
        let name = ns.name().to_string();
        ns.run(|| kernel_col(&name, spec, &snap, &rs, reps))
            .unwrap_or_else(|e| panic!("entering {name}: {e}"))
    });
    Col {
        size: size.clone(),
        reps,
        synth,
        compile: compile_t,
        compile_wait,
        render: render_t,
        stats,
        kernel,
    }
}

/// Runs on a thread that entered the namespace `ns`: `nft` is run as is.
fn kernel_col(ns: &str, spec: &SynthSpec, snap: &Snapshot, rs: &Ruleset, reps: Reps) -> KernelCol {
    let nft = Nft::default();
    // The floor: one nft call that does nothing, as nftpol runs it, and
    // with the `ip netns exec` wrapper that tests use.
    let (floor, _) = timed(reps.floor, || {
        nft.run(&["list", "tables"], None).expect("nft list tables")
    });
    let wrapped = Nft::with_command(
        ["ip", "netns", "exec", ns, "nft"]
            .map(String::from)
            .to_vec(),
    );
    let (floor_wrapped, _) = timed(reps.floor, || {
        wrapped
            .run(&["list", "tables"], None)
            .expect("ip netns exec nft list tables")
    });
    let (floor_plain, _) = timed(reps.floor, || {
        Command::new("nft")
            .args(["--version"])
            .stdout(Stdio::null())
            .status()
            .expect("nft --version")
    });

    // Full apply, in a fresh namespace: the first run creates the table,
    // later ones replace it. Element updates over netlink, as `nftpol run`.
    let mut syncer = Syncer::new(
        NetlinkDiffs::new(
            Netlink::open(None).expect("a netlink socket in the namespace"),
            nft.clone(),
        ),
        TABLE,
    );
    let mut nl = Netlink::open(None).expect("a netlink socket in the namespace");
    let mut full_times = Vec::new();
    for _ in 0..reps.full {
        syncer.force_full();
        let want = rs.clone();
        let t = Instant::now();
        let report = syncer.sync(want).expect("full sync");
        full_times.push(t.elapsed());
        assert!(report.full);
    }
    let full = median(full_times);
    eprintln!("   full apply {full:.2?}");

    // Where a full apply's time goes, phase by phase.
    let (ops_t, full_ops) = timed(reps.full, || ops::full(rs));
    // As Syncer sends it: streamed to bytes (`json::batch_bytes`); the value
    // tree and its serialization apart for comparison.
    let (json_t, doc) = timed(reps.full, || json::batch(TABLE, &full_ops));
    let (ser_t, _) = timed(reps.full, || serde_json::to_vec(&doc).expect("serialize"));
    let (bytes_t, body) = timed(reps.full, || json::batch_bytes(TABLE, &full_ops));
    let cpu0 = ChildCpu::now();
    let (exec_t, _) = timed(reps.full, || {
        nft.run(&["-j", "-f", "-"], Some(&body)).expect("nft -j -f")
    });
    let exec_cpu = ChildCpu::now().since(cpu0, reps.full);
    let text = to_text(rs);
    let (text_load, _) = timed(reps.full, || {
        nft.run(&["-f", "-"], Some(text.as_bytes()))
            .expect("nft -f (text)")
    });
    let full_phases = FullPhases {
        ops: ops_t,
        json: json_t,
        serialize: ser_t,
        bytes_stream: bytes_t,
        exec: exec_t,
        exec_cpu,
        bytes: body.len(),
        text_bytes: text.len(),
    };
    // Back to a known state for the incremental runs.
    syncer.force_full();
    syncer.sync(rs.clone()).expect("full sync");

    let changes = CHANGES
        .iter()
        .map(|(name, change)| {
            let changed = change(snap, spec);
            let incr = incremental(
                &mut syncer,
                &nft,
                &mut nl,
                rs,
                &changed,
                &spec.node,
                reps.incr,
            );
            eprintln!(
                "   {name}: end to end {:.2?}, apply {:.2?}",
                incr.total, incr.sync
            );
            incr
        })
        .collect();
    KernelCol {
        floor,
        floor_wrapped,
        floor_plain,
        full,
        full_phases,
        text_load,
        changes,
    }
}

/// From `base` applied: compile, render and sync `changed`; then back to
/// `base` (untimed) for the next run.
fn incremental(
    syncer: &mut Syncer,
    nft: &Nft,
    nl: &mut Netlink,
    base: &Ruleset,
    changed: &Snapshot,
    node: &str,
    runs: usize,
) -> Incr {
    let (mut total, mut comp, mut rend, mut sync) = (vec![], vec![], vec![], vec![]);
    let mut comp_wait = vec![];
    let mut commands = 0;
    for _ in 0..runs {
        let back = syncer.sync(base.clone()).expect("sync back to base");
        assert!(!back.full, "restoring the base must be incremental");
        let t0 = Instant::now();
        let (wait, c) = waited(|| compile(changed, node));
        let t1 = Instant::now();
        comp_wait.push(wait);
        let rs = render(&c.plan, TABLE);
        let t2 = Instant::now();
        let report = syncer.sync(rs).expect("incremental sync");
        let t3 = Instant::now();
        assert!(!report.full, "one change must not need a full apply");
        assert!(report.commands > 0, "the change must reach the kernel");
        commands = report.commands;
        comp.push(t1 - t0);
        rend.push(t2 - t1);
        sync.push(t3 - t2);
        total.push(t3 - t0);
    }
    syncer.sync(base.clone()).expect("sync back to base");

    // The sync's two halves apart: building the batch, and nft running it
    // (each run undone by the reverse batch, so the syncer's record stays
    // true).
    // The table as the syncer left it (interval sets may be cut otherwise
    // than `base` renders them); the undo restores exactly that.
    let start = syncer.applied().expect("base applied").clone();
    let want = render(&compile(changed, node).plan, TABLE);
    let (diff, (doc, change)) = timed(runs, || {
        let change = ops::diff(&start, &want).expect("incremental diff");
        (json::batch(TABLE, &change.ops), change)
    });
    let undo_ops = ops::diff_exact(&change.applied, &start)
        .expect("reverse diff")
        .ops;
    let undo = json::batch(TABLE, &undo_ops);
    // The same change over netlink, where it only updates elements.
    let netlink_t = (netlink::carries(&change.ops) && netlink::carries(&undo_ops)).then(|| {
        let mut times = Vec::new();
        for _ in 0..runs {
            let t = Instant::now();
            nl.apply(&change.applied, &change.ops)
                .expect("netlink (diff)");
            times.push(t.elapsed());
            nl.apply(&start, &undo_ops).expect("netlink (undo)");
        }
        median(times)
    });
    let mut exec = Vec::new();
    let mut cpu = ChildCpu::default();
    for _ in 0..runs {
        let c0 = ChildCpu::now();
        let t = Instant::now();
        nft.apply_json(TABLE, &doc).expect("nft (diff)");
        exec.push(t.elapsed());
        cpu.add(ChildCpu::now().since(c0, 1));
        nft.apply_json(TABLE, &undo).expect("nft (undo)");
    }
    Incr {
        total: median(total),
        compile: median(comp),
        compile_wait: median(comp_wait),
        render: median(rend),
        sync: median(sync),
        diff,
        exec: median(exec),
        exec_cpu: cpu.per_run(runs),
        netlink: netlink_t,
        commands,
    }
}

/// CPU time of this process's finished children (`cutime`, `cstime` of
/// `/proc/self/stat`, in ticks of 10 ms): what the `nft` processes spent
/// in user space and in the kernel.
#[derive(Clone, Copy, Debug, Default)]
struct ChildCpu {
    user: Duration,
    sys: Duration,
}

impl ChildCpu {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name: state is field 3, cutime 16, cstime 17.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let tick = |i: usize| Duration::from_millis(f.get(i).copied().unwrap_or(0) * 10);
        ChildCpu {
            user: tick(13),
            sys: tick(14),
        }
    }

    /// Per run, from `earlier` to `self`, over `runs` runs.
    fn since(self, earlier: ChildCpu, runs: usize) -> ChildCpu {
        ChildCpu {
            user: (self.user - earlier.user) / runs as u32,
            sys: (self.sys - earlier.sys) / runs as u32,
        }
    }

    fn add(&mut self, other: ChildCpu) {
        self.user += other.user;
        self.sys += other.sys;
    }

    fn per_run(self, runs: usize) -> ChildCpu {
        self.since(ChildCpu::default(), runs)
    }
}

impl std::fmt::Display for ChildCpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} / {}", ms(self.user), ms(self.sys))
    }
}

// ---------------------------------------------------------------------------
// Output: one table per size, then the growth factors.

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn verdict(d: Duration, target: Duration) -> String {
    let v = if d <= target { "PASS" } else { "MISS" };
    format!("{} {v} (≤ {} ms)", ms(d), target.as_millis())
}

fn print_size(out: &mut String, c: &Col, skipped: Option<&String>) {
    let r = c.reps;
    let _ = writeln!(
        out,
        "\n### {}: {}, {} on the node",
        c.size.label,
        c.size.describe(),
        c.size.spec.local_pods
    );
    let _ = writeln!(out);
    let s = &c.stats;
    let mut rows = vec![
        vec!["synthesize snapshot".into(), ms(c.synth)],
        vec![
            format!("compile (median of {})", r.compile),
            verdict(c.compile, COMPILE_TARGET),
        ],
        vec![
            "  of which waiting for a CPU (shared machine)".into(),
            ms(c.compile_wait),
        ],
        vec![format!("render (median of {})", r.compile), ms(c.render)],
        vec![
            "rules / chains".into(),
            format!("{} / {}", s.rules, s.chains),
        ],
        vec![
            "sets + maps / set elements / map elements".into(),
            format!("{} / {} / {}", s.sets, s.set_elements, s.map_elements),
        ],
    ];
    let Some(kc) = &c.kernel else {
        rows.push(vec![
            "kernel figures".into(),
            format!("skipped ({})", skipped.map_or("?", String::as_str)),
        ]);
        table(out, &["", "value"], &rows);
        return;
    };
    let fp = &kc.full_phases;
    rows.extend([
        vec![
            format!("floor: `nft list tables` (median of {})", r.floor),
            ms(kc.floor),
        ],
        vec![
            "floor: `ip netns exec NS nft list tables` (tests' wrapper)".into(),
            ms(kc.floor_wrapped),
        ],
        vec![
            "floor: `nft --version` (no netns)".into(),
            ms(kc.floor_plain),
        ],
        vec![
            format!("full apply, Syncer::sync (median of {})", r.full),
            verdict(kc.full, FULL_TARGET),
        ],
        vec!["  ops::full".into(), ms(fp.ops)],
        vec![
            "  json::batch_bytes (what Syncer sends)".into(),
            ms(fp.bytes_stream),
        ],
        vec![
            "  (json::batch + serde_json::to_vec, for comparison)".into(),
            format!("{} + {}", ms(fp.json), ms(fp.serialize)),
        ],
        vec!["  nft -j -f - (exec)".into(), ms(fp.exec)],
        vec![
            "    nft CPU: user (parse, cache) / system (netlink, kernel)".into(),
            fp.exec_cpu.to_string(),
        ],
        vec![
            "  batch size (JSON / text)".into(),
            format!("{} KiB / {} KiB", fp.bytes / 1024, fp.text_bytes / 1024),
        ],
        vec![
            "  same ruleset as text, nft -f - (for comparison)".into(),
            ms(kc.text_load),
        ],
    ]);
    table(out, &["", "value"], &rows);

    let _ = writeln!(
        out,
        "\nOne change (median of {}): apply = Syncer::sync of the rendered ruleset \
         (diff + one transaction over netlink, as the controller sends it; nft alone and netlink alone: the same batch apart); \
         end to end = compile + render + apply.\n",
        r.incr
    );
    let rows: Vec<Vec<String>> = CHANGES
        .iter()
        .zip(&kc.changes)
        .map(|((name, _), i)| {
            vec![
                name.to_string(),
                verdict(i.sync, INCR_TARGET),
                verdict(i.total, INCR_TARGET),
                format!("{} ({} waiting)", ms(i.compile), ms(i.compile_wait)),
                ms(i.render),
                ms(i.diff),
                ms(i.exec),
                i.exec_cpu.to_string(),
                i.netlink.map_or("- (needs nft)".into(), ms),
                i.commands.to_string(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "change",
            "apply",
            "end to end",
            "compile (CPU wait)",
            "render",
            "diff + batch",
            "nft alone",
            "nft CPU user / sys",
            "netlink alone",
            "commands",
        ],
        &rows,
    );
}

fn print_growth(out: &mut String, cols: &[Col]) {
    let _ = writeln!(
        out,
        "\n### Growth factors (each size against the one before)\n"
    );
    // (name, value per column)
    let mut metrics: Vec<(String, Vec<Option<f64>>)> = Vec::new();
    let mut add = |name: &str, f: &dyn Fn(&Col) -> Option<f64>| {
        metrics.push((name.to_string(), cols.iter().map(f).collect()));
    };
    let secs = |d: Duration| Some(d.as_secs_f64() * 1e3);
    add("pods", &|c| Some(c.size.spec.pods as f64));
    add("policies", &|c| Some(c.size.spec.policies as f64));
    add("compile (ms)", &|c| secs(c.compile));
    add("  compile minus CPU wait (ms)", &|c| {
        secs(c.compile.saturating_sub(c.compile_wait))
    });
    add("render (ms)", &|c| secs(c.render));
    add("rules", &|c| Some(c.stats.rules as f64));
    add("chains", &|c| Some(c.stats.chains as f64));
    add("set elements", &|c| Some(c.stats.set_elements as f64));
    add("full apply (ms)", &|c| {
        c.kernel.as_ref().and_then(|k| secs(k.full))
    });
    add("  of which nft (ms)", &|c| {
        c.kernel.as_ref().and_then(|k| secs(k.full_phases.exec))
    });
    for (i, (name, _)) in CHANGES.iter().enumerate() {
        add(&format!("{name}: apply (ms)"), &|c| {
            c.kernel.as_ref().and_then(|k| secs(k.changes[i].sync))
        });
        add(&format!("{name}: end to end (ms)"), &|c| {
            c.kernel.as_ref().and_then(|k| secs(k.changes[i].total))
        });
    }
    let mut head: Vec<String> = vec!["figure".into()];
    head.extend(cols.iter().map(|c| c.size.label.clone()));
    head.extend(
        cols.windows(2)
            .map(|w| format!("× {}/{}", w[1].size.label, w[0].size.label)),
    );
    let fmt = |v: Option<f64>| match v {
        None => "–".to_string(),
        Some(x) if x >= 100.0 || x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
    };
    let rows: Vec<Vec<String>> = metrics
        .iter()
        .map(|(name, vals)| {
            let mut row = vec![name.clone()];
            row.extend(vals.iter().map(|v| fmt(*v)));
            row.extend(vals.windows(2).map(|w| match (w[0], w[1]) {
                (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
                _ => "–".into(),
            }));
            row
        })
        .collect();
    let head: Vec<&str> = head.iter().map(String::as_str).collect();
    table(out, &head, &rows);
}

// ---------------------------------------------------------------------------
// Kernel access, and the machine.

/// `Ok` when this process may create namespaces and run nft; else why not
/// (printed as `skipped (needs root)` and the like).
fn kernel_access() -> Result<(), String> {
    match nftpol_lab::lab::unavailable() {
        None => Ok(()),
        Some(why) if why == "not root" => Err("needs root".into()),
        Some(why) => Err(why),
    }
}
