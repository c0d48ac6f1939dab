//! The command line: argument parsing and the offline commands.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tracing::{error, info, warn};

use crate::Error;
use crate::compiler::explain::{explain, parse_port_arg};
use crate::compiler::{Compiled, ObjectKey, Severity, compile};
use crate::load::load_paths;
use crate::nft::{self, Nft, Syncer};

#[derive(Parser, Debug)]
#[command(
    name = "nftpol",
    version,
    about = "Kubernetes NetworkPolicy enforcement with nftables"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "NFTPOL_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// See `nftpol run --changes-via`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ChangesVia {
    Netlink,
    Nft,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the ruleset a node would enforce (nft -f text, or JSON). No root needed.
    Compile {
        /// YAML/JSON files or directories with Namespaces, Pods and NetworkPolicies.
        #[arg(long, required = true, num_args = 1..)]
        cluster: Vec<PathBuf>,
        /// The node whose pods to enforce for.
        #[arg(long)]
        node: String,
        /// Print the JSON batch `nft -j -f -` reads instead of nft text.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = nft::DEFAULT_TABLE)]
        table: String,
    },
    /// Say whether a connection between two pods is allowed, and why. No root needed.
    Explain {
        #[arg(long, required = true, num_args = 1..)]
        cluster: Vec<PathBuf>,
        /// Source pod, NAMESPACE/POD.
        #[arg(long)]
        from: String,
        /// Destination pod, NAMESPACE/POD.
        #[arg(long)]
        to: String,
        /// PORT/PROTOCOL, e.g. 80/TCP, 53/UDP or a named port of the destination: http/TCP.
        #[arg(long)]
        port: String,
    },
    /// Compile and apply once to this host's kernel (root).
    Apply {
        #[arg(long, required = true, num_args = 1..)]
        cluster: Vec<PathBuf>,
        #[arg(long)]
        node: String,
        #[arg(long, default_value = nft::DEFAULT_TABLE)]
        table: String,
    },
    /// Remove nftpol's table (the uninstall step; root).
    Cleanup {
        #[arg(long, default_value = nft::DEFAULT_TABLE)]
        table: String,
    },
    /// Watch the API and enforce continuously: the DaemonSet entrypoint (root).
    Run {
        /// This node's name (its pods get chains).
        #[arg(long, env = "NODE_NAME")]
        node_name: String,
        /// Kubeconfig file; else KUBECONFIG / ~/.kube/config, else in-cluster.
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        #[arg(long, env = "NFTPOL_TABLE", default_value = nft::DEFAULT_TABLE)]
        table: String,
        /// Address of /healthz, /readyz, /metrics and /status.
        #[arg(long, env = "NFTPOL_METRICS_ADDR", default_value = "0.0.0.0:9798")]
        metrics_addr: SocketAddr,
        /// Period of the full resync (re-applies the whole table; repairs it if changed by hand).
        #[arg(long, env = "NFTPOL_RESYNC_PERIOD", default_value = "5m", value_parser = humantime::parse_duration)]
        resync_period: Duration,
        /// Minimum time between two syncs: bursts of changes are coalesced.
        #[arg(long, env = "NFTPOL_MIN_SYNC_INTERVAL", default_value = "10ms", value_parser = humantime::parse_duration)]
        min_sync_interval: Duration,
        /// Command that runs nft, split at spaces (tests: "ip netns exec NODE nft").
        #[arg(long, env = "NFTPOL_NFT_COMMAND", default_value = "nft")]
        nft_command: String,
        /// How incremental changes (every transaction but the full
        /// replacement of the table, which nft loads as text) reach the
        /// kernel: over nftpol's own nf_tables netlink socket (one round
        /// trip, no process started), or through nft.
        #[arg(long, env = "NFTPOL_CHANGES_VIA", value_enum, default_value_t = ChangesVia::Netlink)]
        changes_via: ChangesVia,
        /// Enforce in the network namespace NAME (as `ip netns` knows it)
        /// instead of nftpol's own: nft runs through `ip netns exec NAME`
        /// and the netlink socket is opened there. For labs and benches.
        #[arg(long, env = "NFTPOL_NETNS")]
        netns: Option<String>,
        /// The bridges local pods are plugged into (Flannel and the bridge
        /// CNI: cni0), comma-separated. Their ports get the port guard
        /// (`table bridge TABLE`): each pod sends only from its own
        /// addresses; link-local, broadcast and multicast traffic neither
        /// leave an egress-isolated pod nor reach an ingress-isolated one.
        /// Empty: no guard (a pod can forge another's address).
        #[arg(
            long,
            env = "NFTPOL_POD_BRIDGES",
            value_delimiter = ',',
            default_value = "cni0"
        )]
        pod_bridges: Vec<String>,
    },
}

/// The `nftpol` command: parses `args` (the program name first), runs the
/// command, logs a failure and returns the exit code (2: bad input, 1: a
/// failure at run time).
pub fn main<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    init_logging(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Logs what the compiler found wrong, one line each.
pub fn report(compiled: &Compiled) {
    for d in &compiled.diagnostics {
        match d.severity {
            Severity::Warning => {
                warn!(policy = %d.policy, field = %d.field, "invalid policy: {}", d.message)
            }
            Severity::Error => {
                error!(policy = %d.policy, field = %d.field, "invalid policy: {}", d.message)
            }
        }
    }
    for w in &compiled.warnings {
        warn!("{w}");
    }
}

fn pod_arg(flag: &str, s: &str) -> Result<ObjectKey, Error> {
    ObjectKey::parse(s)
        .ok_or_else(|| Error::Usage(format!("{flag} must be NAMESPACE/POD, got {s:?}")))
}

pub fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Compile {
            cluster,
            node,
            json,
            table,
        } => {
            let snap = load_paths(&cluster)?;
            let compiled = compile(&snap, &node);
            report(&compiled);
            let rs = nft::render(&compiled.plan, &table);
            let st = rs.stats();
            info!(
                node,
                isolated_pod_chains = compiled.plan.pods.len(),
                chains = st.chains,
                rules = st.rules,
                set_elements = st.set_elements,
                "compiled"
            );
            if json {
                let doc = nft::transport::json::ruleset_json(&rs);
                println!(
                    "{}",
                    serde_json::to_string_pretty(&doc).expect("JSON serializes")
                );
            } else {
                print!("{}", nft::to_text(&rs));
            }
            Ok(())
        }
        Command::Explain {
            cluster,
            from,
            to,
            port,
        } => {
            let snap = load_paths(&cluster)?;
            let from = pod_arg("--from", &from)?;
            let to = pod_arg("--to", &to)?;
            let (port, proto) = parse_port_arg(&port).map_err(Error::Usage)?;
            let e = explain(&snap, &from, &to, &port, proto).map_err(Error::Usage)?;
            print!("{}", e.text);
            Ok(())
        }
        Command::Apply {
            cluster,
            node,
            table,
        } => {
            let snap = load_paths(&cluster)?;
            let compiled = compile(&snap, &node);
            report(&compiled);
            let mut syncer = Syncer::new(Nft::default(), table.clone());
            let r = syncer.sync(nft::render(&compiled.plan, &table))?;
            info!(
                table,
                chains = r.stats.chains,
                rules = r.stats.rules,
                set_elements = r.stats.set_elements,
                elapsed_ms = r.elapsed.as_secs_f64() * 1e3,
                "applied in one transaction"
            );
            Ok(())
        }
        Command::Cleanup { table } => {
            Syncer::new(Nft::default(), table.clone()).cleanup()?;
            nft::guard::GuardSyncer::new(Nft::default(), table.clone()).remove()?;
            info!(table, "removed table inet {table} and table bridge {table}");
            Ok(())
        }
        Command::Run {
            node_name,
            kubeconfig,
            table,
            metrics_addr,
            resync_period,
            min_sync_interval,
            nft_command,
            changes_via,
            netns,
            pod_bridges,
        } => {
            let mut argv: Vec<String> = nft_command.split_whitespace().map(String::from).collect();
            if argv.is_empty() {
                return Err(Error::Usage("--nft-command must not be empty".into()));
            }
            let netns_path = match &netns {
                Some(name) if name.is_empty() || name.contains('/') => {
                    return Err(Error::Usage(format!(
                        "--netns takes a name that `ip netns` knows, not {name:?}"
                    )));
                }
                Some(name) => {
                    let mut wrapped: Vec<String> =
                        ["ip", "netns", "exec", name].map(String::from).to_vec();
                    wrapped.append(&mut argv);
                    argv = wrapped;
                    Some(PathBuf::from("/run/netns").join(name))
                }
                None => None,
            };
            let cfg = crate::watch::RunConfig {
                node_name,
                kubeconfig,
                table,
                metrics_addr,
                resync_period,
                min_sync_interval,
                nft: Nft::with_command(argv),
                netlink: match changes_via {
                    ChangesVia::Netlink => Some(crate::watch::NetlinkAt {
                        netns: netns_path.clone(),
                    }),
                    ChangesVia::Nft => None,
                },
                netns: netns_path,
                pod_bridges: pod_bridges.into_iter().filter(|b| !b.is_empty()).collect(),
            };
            let runtime = tokio::runtime::Runtime::new()
                .map_err(|e| Error::Run(anyhow::anyhow!("cannot start the async runtime: {e}")))?;
            runtime.block_on(crate::watch::run(cfg)).map_err(Error::Run)
        }
    }
}
