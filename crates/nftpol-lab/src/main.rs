//! `nftpol-lab`: the test bench's command line (the sandbox, the
//! conformance runner, the development API server). Not in the image.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use nftpol::cli::{LogFormat, init_logging};
use nftpol_lab::lab::{self, Nftpol};
use nftpol_lab::{PRODUCT_COMMAND, conformance, devserver, sandbox};
use tracing::{error, info};

#[derive(Parser, Debug)]
#[command(
    name = "nftpol-lab",
    version,
    about = "nftpol's test bench: sandbox, conformance runner, development API server"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an in-memory Kubernetes API server, for development and tests only.
    ///
    /// NOT a cluster: no authentication, no TLS, nothing persisted. Serves
    /// namespaces, pods, nodes, events and networkpolicies to kube-rs and
    /// kubectl over plain HTTP. Prints its URL; stops on Ctrl-C.
    Devserver {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8001")]
        listen: SocketAddr,
        /// Write a kubeconfig for the server to this file.
        #[arg(long)]
        kubeconfig_out: Option<PathBuf>,
        /// Changes the watch history keeps (older resourceVersions get 410 Expired).
        #[arg(long, default_value_t = 1000)]
        history_size: usize,
        /// Interval of watch bookmarks, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        bookmark_interval_ms: u64,
    },
    /// Play conformance cases on a two-node Flannel cluster in network
    /// namespaces, with `nftpol run` on each node (root).
    ///
    /// Cases use the format of conformance/README.md. Prints PASS/FAIL per
    /// case and `N passed, N failed`; exits 1 when a case failed.
    Conformance {
        /// Case files or directories (repeatable).
        #[arg(long = "cases", default_value = "conformance/cases")]
        cases: Vec<PathBuf>,
        /// Only cases whose name or file name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Connection timeout of one probe.
        #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
        probe_timeout: Duration,
        /// The `nftpol` binary the nodes run (e.g. target/release/nftpol).
        /// Default: the product as linked into this binary, the same code.
        #[arg(long)]
        nftpol: Option<PathBuf>,
    },
    /// A two-node sandbox cluster with the pods of examples/cluster.yaml, a
    /// development API server for kubectl, and nftpol on each node (root).
    ///
    /// `sandbox` starts it and prints the TCP/80 reachability matrix;
    /// `sandbox probe` prints the matrix again; `sandbox down` removes
    /// everything it made.
    Sandbox {
        #[command(subcommand)]
        action: Option<SandboxAction>,
        /// Where the state file, kubeconfig and log are kept.
        #[arg(long, global = true, default_value = sandbox::DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Where the API server listens for kubectl (port 0: a free port).
        #[arg(long, global = true, default_value = "127.0.0.1:0")]
        api: SocketAddr,
    },
    /// The product's command line, linked into this binary: `nftpol-lab
    /// nftpol run ...` is `nftpol run ...` (the sandbox's nodes run it).
    #[command(name = PRODUCT_COMMAND)]
    Nftpol {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[derive(Subcommand, Debug, Clone, Copy)]
enum SandboxAction {
    /// Start the sandbox (the default).
    Up,
    /// Print the reachability matrix again.
    Probe,
    /// Stop the sandbox and remove everything it made.
    Down,
    /// The background process `up` starts (not for direct use).
    #[command(hide = true)]
    Serve,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Nftpol { args } = cli.command {
        let program = std::ffi::OsString::from(PRODUCT_COMMAND);
        return nftpol::cli::main(std::iter::once(program).chain(args));
    }
    init_logging(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Devserver {
            listen,
            kubeconfig_out,
            history_size,
            bookmark_interval_ms,
        } => {
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(async {
                let config = devserver::Config {
                    listen,
                    kubeconfig_out,
                    history_size,
                    bookmark_interval: Duration::from_millis(bookmark_interval_ms),
                    ..Default::default()
                };
                let handle = devserver::DevServer::start(config).await?;
                println!("{}", handle.url);
                info!(url = %handle.url, kubeconfig = ?handle.kubeconfig_path, "devserver listening (development and tests only)");
                let _ = tokio::signal::ctrl_c().await;
                handle.shutdown().await;
                Ok(())
            })
        }
        Command::Conformance {
            cases,
            filter,
            probe_timeout,
            nftpol,
        } => {
            if let Some(why) = lab::unavailable() {
                bail!("the conformance runner needs root, `ip` and `nft` ({why})");
            }
            let binary = match nftpol {
                Some(path) => Nftpol::binary(path),
                None => Nftpol::linked_into_this_binary(&[PRODUCT_COMMAND])
                    .context("finding this binary")?,
            };
            let opts = conformance::Options {
                cases,
                filter,
                binary,
                probe_timeout,
            };
            let summary = conformance::run(&opts, &mut std::io::stdout().lock())?;
            if summary.failed > 0 {
                return Err(anyhow!(
                    "{} of {} cases failed",
                    summary.failed,
                    summary.failed + summary.passed
                ));
            }
            Ok(())
        }
        Command::Sandbox {
            action,
            state_dir,
            api,
        } => {
            let out = &mut std::io::stdout().lock();
            match action.unwrap_or(SandboxAction::Up) {
                SandboxAction::Up => sandbox::up(&state_dir, api, out),
                SandboxAction::Probe => sandbox::probe(&state_dir, out),
                SandboxAction::Down => sandbox::down(&state_dir, out),
                SandboxAction::Serve => sandbox::serve(&state_dir, api),
            }
        }
        Command::Nftpol { .. } => unreachable!("handled in main"),
    }
}
