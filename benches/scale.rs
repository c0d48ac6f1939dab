//! Scale benchmark: compile, render and apply synthetic clusters.
//!
//! ```text
//! cargo bench --bench scale              # 1k and 10k pods
//! NFTPOL_BENCH_QUICK=1 cargo bench --bench scale   # 1k only, few runs (or: -- --quick)
//! NFTPOL_BENCH_PROFILE=compile cargo bench --bench scale  # one phase in a loop, for perf
//! NFTPOL_BENCH_PROFILE=plan cargo bench --bench scale     # the 10k node's sets and chains
//! ```
//!
//! The kernel parts run as root only, each size in its own fresh network
//! namespace (`ip netns add`), removed again on exit or panic.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nftpol::compiler::{Snapshot, compile, parse_policies};
use nftpol::lab::Netns;
use nftpol::nft::{Nft, Ruleset, Stats, Syncer, json, ops, render, to_text};
use nftpol::synth::{SynthSpec, synth_cluster, with_local_pod_added, with_remote_pod_added};

const TABLE: &str = "nftpol";

const COMPILE_TARGET: Duration = Duration::from_millis(50);
const FULL_TARGET: Duration = Duration::from_millis(300);
const INCR_TARGET: Duration = Duration::from_millis(20);

struct Reps {
    compile: usize,
    full: usize,
    incr: usize,
    floor: usize,
}

fn main() {
    let quick = std::env::var("NFTPOL_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
        || std::env::args().any(|a| a == "--quick");
    let reps = if quick {
        Reps {
            compile: 5,
            full: 2,
            incr: 3,
            floor: 3,
        }
    } else {
        Reps {
            compile: 15,
            full: 5,
            incr: 10,
            floor: 10,
        }
    };
    if let Ok(what) = std::env::var("NFTPOL_BENCH_PROFILE") {
        return profile_loop(&what);
    }
    let mut sizes = vec![("1k", SynthSpec::new(1_000, 100, 50))];
    if !quick {
        sizes.push(("10k", SynthSpec::new(10_000, 1_000, 500)));
    }
    let kernel = kernel_access();

    let mut cols = Vec::new();
    for (label, spec) in &sizes {
        eprintln!("== {label}: {spec:?}");
        cols.push(run_size(label, spec, &reps, kernel.is_ok()));
    }
    print_table(&cols, &reps, kernel.as_ref().err(), quick);
}

/// `NFTPOL_BENCH_PROFILE=PHASE[-cold|-spawn|-batch][:1k]`, PHASE one of
/// `compile`, `compile-changed`, `parse`, `render`, `json`: runs one phase on
/// the 10k (or 1k) cluster in a loop, for `perf record`.
/// `NFTPOL_BENCH_PROFILE=plan[:1k]` lists the rendered sets and chains.
fn profile_loop(what: &str) {
    let (what, size) = what.split_once(':').unwrap_or((what, "10k"));
    let spec = match size {
        "1k" => SynthSpec::new(1_000, 100, 50),
        _ => SynthSpec::new(10_000, 1_000, 500),
    };
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

/// Results of one size; `None` where skipped.
struct Col {
    label: String,
    synth: Duration,
    compile: Duration,
    compile_wait: Duration,
    render: Duration,
    stats: Stats,
    kernel: Option<KernelCol>,
}

struct KernelCol {
    floor: Duration,
    floor_plain: Duration,
    full: Duration,
    full_phases: FullPhases,
    text_load: Duration,
    local: Incr,
    remote: Incr,
}

struct FullPhases {
    ops: Duration,
    json: Duration,
    serialize: Duration,
    exec: Duration,
    bytes: usize,
    text_bytes: usize,
}

struct Incr {
    total: Duration,
    compile: Duration,
    compile_wait: Duration,
    render: Duration,
    sync: Duration,
    /// `ops::diff` + `json::batch` alone.
    diff: Duration,
    /// `nft -j -f -` of the same batch alone (incl. `ip netns exec`).
    exec: Duration,
    commands: usize,
}

fn median(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty());
    v.sort();
    v[(v.len() - 1) / 2]
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

fn run_size(label: &str, spec: &SynthSpec, reps: &Reps, kernel: bool) -> Col {
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
        let ns = Netns::create(&format!("bench-{label}"))
            .unwrap_or_else(|e| panic!("ip netns add: {e}"));
        kernel_col(&ns, spec, &snap, &rs, reps)
    });
    Col {
        label: label.to_string(),
        synth,
        compile: compile_t,
        compile_wait,
        render: render_t,
        stats,
        kernel,
    }
}

fn kernel_col(
    ns: &Netns,
    spec: &SynthSpec,
    snap: &Snapshot,
    rs: &Ruleset,
    reps: &Reps,
) -> KernelCol {
    // The floor: one nft call that does nothing, with and without the
    // namespace wrapper.
    let (floor, _) = timed(reps.floor, || {
        ns.nft()
            .run(&["list", "tables"], None)
            .expect("nft list tables")
    });
    let (floor_plain, _) = timed(reps.floor, || {
        Command::new("nft")
            .args(["--version"])
            .stdout(Stdio::null())
            .status()
            .expect("nft --version")
    });

    // Full apply, in a fresh namespace: the first run creates the table,
    // later ones replace it.
    let mut syncer = Syncer::new(ns.nft(), TABLE);
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
    let nft = ns.nft();
    let (ops_t, full_ops) = timed(reps.full, || ops::full(rs));
    let (json_t, doc) = timed(reps.full, || json::batch(TABLE, &full_ops));
    let (ser_t, body) = timed(reps.full, || serde_json::to_vec(&doc).expect("serialize"));
    let (exec_t, _) = timed(reps.full, || {
        nft.run(&["-j", "-f", "-"], Some(&body)).expect("nft -j -f")
    });
    let text = to_text(rs);
    let (text_load, _) = timed(reps.full, || {
        nft.run(&["-f", "-"], Some(text.as_bytes()))
            .expect("nft -f (text)")
    });
    let full_phases = FullPhases {
        ops: ops_t,
        json: json_t,
        serialize: ser_t,
        exec: exec_t,
        bytes: body.len(),
        text_bytes: text.len(),
    };
    // Back to a known state for the incremental runs.
    syncer.force_full();
    syncer.sync(rs.clone()).expect("full sync");

    let local = incremental(
        &mut syncer,
        &nft,
        rs,
        &with_local_pod_added(snap, spec),
        &spec.node,
        reps.incr,
    );
    eprintln!("   +local pod {:.2?}", local.total);
    let remote = incremental(
        &mut syncer,
        &nft,
        rs,
        &with_remote_pod_added(snap, spec),
        &spec.node,
        reps.incr,
    );
    eprintln!("   +remote pod {:.2?}", remote.total);
    KernelCol {
        floor,
        floor_plain,
        full,
        full_phases,
        text_load,
        local,
        remote,
    }
}

/// From `base` applied: compile, render and sync `changed`; then back to
/// `base` (untimed) for the next run.
fn incremental(
    syncer: &mut Syncer,
    nft: &Nft,
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
    let want = render(&compile(changed, node).plan, TABLE);
    let (diff, doc) = timed(runs, || {
        let ops = ops::diff(base, &want).expect("incremental diff");
        json::batch(TABLE, &ops)
    });
    let undo = json::batch(TABLE, &ops::diff(&want, base).expect("reverse diff"));
    let mut exec = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        nft.apply_json(TABLE, &doc).expect("nft (diff)");
        exec.push(t.elapsed());
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
        commands,
    }
}

// ---------------------------------------------------------------------------
// Output.

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn verdict(d: Duration, target: Duration) -> String {
    let v = if d <= target { "PASS" } else { "MISS" };
    format!("{} {v} (≤ {} ms)", ms(d), target.as_millis())
}

fn print_table(cols: &[Col], reps: &Reps, skipped: Option<&String>, quick: bool) {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&Col) -> String| {
        rows.push((name.to_string(), cols.iter().map(f).collect()));
    };
    let why = format!("skipped ({})", skipped.map_or("?", String::as_str));
    let k = |c: &Col, f: &dyn Fn(&KernelCol) -> String| match &c.kernel {
        Some(kc) => f(kc),
        None => why.clone(),
    };
    row("synthesize snapshot", &|c| ms(c.synth));
    row(&format!("compile (median of {})", reps.compile), &|c| {
        verdict(c.compile, COMPILE_TARGET)
    });
    row("  of which waiting for a CPU (shared machine)", &|c| {
        ms(c.compile_wait)
    });
    row(&format!("render (median of {})", reps.compile), &|c| {
        ms(c.render)
    });
    row("rules", &|c| c.stats.rules.to_string());
    row("chains", &|c| c.stats.chains.to_string());
    row("sets + maps", &|c| c.stats.sets.to_string());
    row("set elements", &|c| c.stats.set_elements.to_string());
    row("map elements", &|c| c.stats.map_elements.to_string());
    row(
        &format!(
            "floor: `ip netns exec NS nft list tables` (median of {})",
            reps.floor
        ),
        &|c| k(c, &|kc| ms(kc.floor)),
    );
    row("floor: `nft --version` (no netns)", &|c| {
        k(c, &|kc| ms(kc.floor_plain))
    });
    row(
        &format!("full apply, Syncer::sync (median of {})", reps.full),
        &|c| k(c, &|kc| verdict(kc.full, FULL_TARGET)),
    );
    row("  ops::full", &|c| k(c, &|kc| ms(kc.full_phases.ops)));
    row("  json::batch", &|c| k(c, &|kc| ms(kc.full_phases.json)));
    row("  serde_json::to_vec", &|c| {
        k(c, &|kc| ms(kc.full_phases.serialize))
    });
    row("  nft -j -f - (exec, incl. netns)", &|c| {
        k(c, &|kc| ms(kc.full_phases.exec))
    });
    row("  batch size (JSON / text)", &|c| {
        k(c, &|kc| {
            format!(
                "{} KiB / {} KiB",
                kc.full_phases.bytes / 1024,
                kc.full_phases.text_bytes / 1024
            )
        })
    });
    row("  same ruleset as text, nft -f - (for comparison)", &|c| {
        k(c, &|kc| ms(kc.text_load))
    });
    for (name, pick) in [
        (
            "+1 local pod",
            (|kc: &KernelCol| &kc.local) as fn(&KernelCol) -> &Incr,
        ),
        ("+1 remote pod (in peer sets)", |kc: &KernelCol| &kc.remote),
    ] {
        row(
            &format!("{name}: compile+render+sync (median of {})", reps.incr),
            &|c| k(c, &|kc| verdict(pick(kc).total, INCR_TARGET)),
        );
        row("  compile", &|c| k(c, &|kc| ms(pick(kc).compile)));
        row("    of which waiting for a CPU", &|c| {
            k(c, &|kc| ms(pick(kc).compile_wait))
        });
        row("  render", &|c| k(c, &|kc| ms(pick(kc).render)));
        row("  sync (diff + nft)", &|c| k(c, &|kc| ms(pick(kc).sync)));
        row("    ops::diff + json::batch alone", &|c| {
            k(c, &|kc| ms(pick(kc).diff))
        });
        row("    nft -j -f - of that batch alone", &|c| {
            k(c, &|kc| ms(pick(kc).exec))
        });
        row("  commands sent", &|c| {
            k(c, &|kc| pick(kc).commands.to_string())
        });
    }

    let head: Vec<String> = cols
        .iter()
        .map(|c| {
            let spec = match c.label.as_str() {
                "1k" => "1k pods / 100 pol / 50 ns",
                _ => "10k pods / 1k pol / 500 ns",
            };
            spec.to_string()
        })
        .collect();
    let w0 = rows
        .iter()
        .map(|(n, _)| n.chars().count())
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = (0..cols.len())
        .map(|i| {
            rows.iter()
                .map(|(_, v)| v[i].chars().count())
                .chain([head[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let line = |out: &mut String, name: &str, vals: &[String]| {
        let _ = write!(out, "| {name:<w0$} |");
        for (v, w) in vals.iter().zip(&widths) {
            let _ = write!(out, " {v:<w$} |");
        }
        out.push('\n');
    };
    let _ = writeln!(
        out,
        "\nnftpol scale benchmark{} — 110 pods on the local node, table inet {TABLE}",
        if quick { " (quick)" } else { "" }
    );
    line(&mut out, "", &head);
    let _ = write!(out, "|{}|", "-".repeat(w0 + 2));
    for w in &widths {
        let _ = write!(out, "{}|", "-".repeat(w + 2));
    }
    out.push('\n');
    for (name, vals) in &rows {
        line(&mut out, name, vals);
    }
    print!("{out}");
}

// ---------------------------------------------------------------------------
// Kernel access and network namespaces.

/// `Ok` when this process may create namespaces and run nft; else why not
/// (printed as `skipped (needs root)` and the like).
fn kernel_access() -> Result<(), String> {
    match nftpol::lab::unavailable() {
        None => Ok(()),
        Some(why) if why == "not root" => Err("needs root".into()),
        Some(why) => Err(why),
    }
}
