//! A small in-memory Kubernetes API server for development and tests.
//!
//! **Not a cluster and not for production**: no authentication, no TLS, no
//! admission, nothing persisted. It serves exactly what nftpol reads and
//! writes, so that kube-rs clients and watchers and the real `kubectl` work
//! against it on a machine without a cluster:
//!
//! | resource | group/version | scope | notes |
//! |---|---|---|---|
//! | `namespaces` (`ns`) | v1 | cluster | `status`; label `kubernetes.io/metadata.name`; delete removes what is inside |
//! | `pods` (`po`) | v1 | namespaced | `status` subresource |
//! | `nodes` (`no`) | v1 | cluster | `status`; stored as given (so `examples/cluster.yaml` applies) |
//! | `events` (`ev`) | v1 and events.k8s.io/v1 | namespaced | one object, two forms (kube-rs's `Recorder` writes events.k8s.io) |
//! | `networkpolicies` (`netpol`) | networking.k8s.io/v1 | namespaced | defaulted and validated as the API server does |
//!
//! Behaviour, as the real API server's where it matters:
//!
//! - One global `resourceVersion` counter; every write bumps it. Objects get
//!   `uid`, `creationTimestamp`, `resourceVersion`, and (Pods,
//!   NetworkPolicies) `generation`, bumped when `spec` changes. A write that
//!   changes nothing keeps the resourceVersion and sends no event.
//! - list with `labelSelector` (equality and set-based) and `fieldSelector`
//!   (`field=value`, `!=`, on any dotted path); `limit`/`continue` are
//!   ignored (everything in one page).
//! - watch (`watch=true`) with `resourceVersion`, `allowWatchBookmarks`,
//!   `timeoutSeconds`, `sendInitialEvents`: replay from a bounded history
//!   ([`Config::history_size`]), then live events; a resourceVersion older
//!   than the history gets an `ERROR` event with a `410 Expired` Status
//!   ([`Handle::compact_history`], or `POST /devserver/compact` from
//!   outside, forces that). Without a resourceVersion (or
//!   with `0`) the current objects come first as ADDED.
//! - create (409 AlreadyExists, 404 for a missing namespace, `generateName`),
//!   update (409 Conflict for a stale resourceVersion), patch (merge, JSON,
//!   strategic merge as kubectl sends it, server-side apply), delete
//!   (immediate; returns a Success Status), deletecollection, `dryRun=All`.
//! - Errors are `Status` objects; invalid NetworkPolicies get 422 `Invalid`
//!   with one `details.causes[]` per field, from nftpol's own validator.
//! - `kubectl get` gets server-side printed Tables (also for `-w`).
//!
//! Deviations, for a development server: deletion is immediate (no graceful
//! deletion, finalizers are stored but do not block); a Pod created with a
//! `status` keeps it (so a cluster file with pod IPs can be loaded with
//! `kubectl apply`), while updates of the main resource keep the stored
//! status as the real server does; Pod spec updates are not restricted;
//! server-side apply merges the applied fields into the object (no managed
//! fields, no conflicts); the OpenAPI document has no schemas.
//!
//! ## kubectl
//!
//! `nftpol-lab devserver --kubeconfig-out /tmp/kc` writes a kubeconfig, then
//! `kubectl --kubeconfig /tmp/kc ...` (kubectl 1.27-1.33, plain HTTP).
//! Tried and working: `version`, `get` (tables, `-A`, `-o wide|yaml|json|name`,
//! `-l`, `-w`), `describe`, `apply -f` (client-side, and `--server-side`),
//! `create -f`, `create namespace`, `run`, `label`, `annotate`, `patch`
//! (`--type=strategic|merge|json`, `--subresource=status`), `delete -f`,
//! `delete namespace` (with what is in it).
//!
//! kubectl validates fields before `apply`/`create`: it looks in the OpenAPI
//! v3 document for the `fieldValidation` parameter, and otherwise downloads
//! the OpenAPI v2 schema to validate itself. The server serves a minimal
//! OpenAPI v3 (PATCH operations and their parameters, no schemas), so
//! kubectl leaves validation to the server (`fieldValidation=Strict`), which
//! decodes every object as its API type: unknown fields are a 400 (Strict),
//! a warning (Warn, the default) or dropped silently (Ignore), and are never
//! stored. `--validate=false` is therefore not needed. Typed kubectl
//! commands that send protobuf are decoded for Namespaces only (`kubectl
//! create namespace`); any other protobuf body gets 415 (use `-f` with YAML).
//! `kubectl explain` has no schemas to show.
//!
//! ## In tests
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use nftpol_lab::devserver::{Config, DevServer};
//! let server = DevServer::start(Config::default()).await?;
//! let client = server.client()?;            // a kube::Client for it
//! // ... create objects, run a watcher ...
//! server.compact_history();                 // older watches now get 410
//! let store = server.store().clone();
//! server.shutdown().await;                  // every watch ends, clients get errors
//! // ... and back, with the same objects, on the same address:
//! let again = DevServer::start_with(Config { listen: "127.0.0.1:8001".parse()?, ..Config::default() },
//!     Some(store), Vec::new()).await?;
//! # Ok(()) }
//! ```
//!
//! [`Handle::serve_also`] (or the listeners of [`DevServer::start_with`])
//! serves more sockets, e.g. one opened inside a network namespace so that
//! processes in that namespace reach the server over their own network.

mod api;
mod discovery;
mod error;
mod patch;
mod protobuf;
mod resources;
mod selectors;
mod store;
mod table;
mod validation;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;

pub use discovery::GIT_VERSION;
pub use error::ApiError;
pub use store::Store;

/// How to run the server.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where to write a kubeconfig for the server, if anywhere.
    pub kubeconfig_out: Option<PathBuf>,
    /// How many changes the watch history keeps.
    pub history_size: usize,
    /// How often a watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Namespaces that exist from the start.
    pub namespaces: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            kubeconfig_out: None,
            history_size: 1000,
            bookmark_interval: Duration::from_secs(1),
            namespaces: ["default", "kube-system", "kube-public", "kube-node-lease"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// The server.
pub struct DevServer;

/// A running server.
pub struct Handle {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    pub addr: SocketAddr,
    /// The kubeconfig written, if [`Config::kubeconfig_out`] was set.
    pub kubeconfig_path: Option<PathBuf>,
    store: Arc<Store>,
    shutdown: tokio_watch::Sender<bool>,
    app: api::App,
    /// One serving task per listener.
    tasks: Vec<JoinHandle<()>>,
    extra_addrs: Vec<SocketAddr>,
}

/// Errors of starting the server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("cannot write kubeconfig {0}: {1}")]
    Kubeconfig(PathBuf, std::io::Error),
}

/// A kubeconfig for a server URL: one cluster, a user without credentials,
/// and a current context with namespace `default`.
pub fn kubeconfig_yaml(url: &str) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: nftpol-dev\n  cluster:\n    server: {url}\n\
         users:\n\
         - name: nftpol-dev\n  user: {{}}\n\
         contexts:\n\
         - name: nftpol-dev\n  context:\n    cluster: nftpol-dev\n    user: nftpol-dev\n    namespace: default\n\
         current-context: nftpol-dev\n"
    )
}

impl DevServer {
    /// Binds, writes the kubeconfig (if asked) and serves in the background.
    pub async fn start(config: Config) -> Result<Handle, StartError> {
        Self::start_with(config, None, Vec::new()).await
    }

    /// Like [`DevServer::start`], with two additions:
    ///
    /// - `store`: serve this store (its objects, resourceVersion and watch
    ///   history) instead of a new one, e.g. the [`Handle::store`] of a server
    ///   that was shut down: the API server "comes back" with the same
    ///   objects. [`Config::namespaces`] are then not created.
    /// - `extra_listeners`: more sockets to serve besides [`Config::listen`],
    ///   e.g. one bound inside another network namespace (see
    ///   [`Handle::serve_also`]).
    pub async fn start_with(
        config: Config,
        store: Option<Arc<Store>>,
        extra_listeners: Vec<std::net::TcpListener>,
    ) -> Result<Handle, StartError> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartError::Listen(config.listen, e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Listen(config.listen, e))?;
        let url = format!("http://{addr}");
        let store = match store {
            Some(store) => store,
            None => {
                let store = Arc::new(Store::new(config.history_size));
                let ns_rt = resources::namespaces();
                for ns in &config.namespaces {
                    let obj = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
                    if let Err(e) = store.create(ns_rt, "", obj, store::WriteOpts::default()) {
                        tracing::warn!("initial namespace {ns}: {e}");
                    }
                }
                store
            }
        };
        if let Some(path) = &config.kubeconfig_out {
            std::fs::write(path, kubeconfig_yaml(&url))
                .map_err(|e| StartError::Kubeconfig(path.clone(), e))?;
        }
        let (shutdown, shutdown_rx) = tokio_watch::channel(false);
        let app = api::App {
            store: store.clone(),
            addr,
            bookmark_interval: config.bookmark_interval.max(Duration::from_millis(10)),
            shutdown: shutdown_rx.clone(),
        };
        let mut handle = Handle {
            url,
            addr,
            kubeconfig_path: config.kubeconfig_out,
            store,
            shutdown,
            app: app.clone(),
            tasks: vec![spawn_server(listener, app)],
            extra_addrs: Vec::new(),
        };
        for l in extra_listeners {
            handle.serve_also(l)?;
        }
        Ok(handle)
    }
}

/// Serves `app` on `listener` until the shutdown signal.
fn spawn_server(listener: tokio::net::TcpListener, app: api::App) -> JoinHandle<()> {
    let mut stop = app.shutdown.clone();
    let router = axum::Router::new().fallback(api::handle).with_state(app);
    tokio::spawn(async move {
        let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
            let _ = stop.wait_for(|v| *v).await;
        });
        if let Err(e) = serve.await {
            tracing::error!("devserver: {e}");
        }
    })
}

impl Handle {
    /// The store behind the server (objects are kept as JSON).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.store.resource_version()
    }

    /// Forgets the watch history: a watch from an older resourceVersion now
    /// gets an `ERROR` event with `410 Expired`.
    pub fn compact_history(&self) {
        self.store.compact_history();
    }

    /// The kubeconfig text for this server.
    pub fn kubeconfig(&self) -> String {
        kubeconfig_yaml(&self.url)
    }

    /// A kube-rs client for this server (plain HTTP, no credentials).
    pub fn client(&self) -> Result<kube::Client, kube::Error> {
        let url = self.url.parse().expect("the server URL parses");
        kube::Client::try_from(kube::Config::new(url))
    }

    /// Also serves on `listener`, a bound std socket (blocking or not), e.g.
    /// one a thread opened inside another network namespace: the socket
    /// keeps that namespace. Must be called within a Tokio runtime. Returns
    /// the listener's address. [`Handle::shutdown`] stops it with the rest.
    pub fn serve_also(
        &mut self,
        listener: std::net::TcpListener,
    ) -> Result<SocketAddr, StartError> {
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Listen(self.addr, e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| StartError::Listen(addr, e))?;
        let listener =
            tokio::net::TcpListener::from_std(listener).map_err(|e| StartError::Listen(addr, e))?;
        let app = api::App {
            addr,
            ..self.app.clone()
        };
        self.tasks.push(spawn_server(listener, app));
        self.extra_addrs.push(addr);
        Ok(addr)
    }

    /// The addresses of the listeners added with [`Handle::serve_also`] (or
    /// [`DevServer::start_with`]).
    pub fn extra_addrs(&self) -> &[SocketAddr] {
        &self.extra_addrs
    }

    /// Ends every watch and stops serving on every listener. The store
    /// stays usable: keep a clone of [`Handle::store`] to start a server
    /// with the same objects again ([`DevServer::start_with`]).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
