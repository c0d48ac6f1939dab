//! Watches: a chunked stream of newline-delimited JSON watch events.
//!
//! A watch replays the kept history after its resourceVersion (or sends the
//! current objects as ADDED when it has none), then follows live changes.
//! Bookmarks, when asked for, come every bookmark interval. A resourceVersion
//! older than the kept history gets one `ERROR` event with a `410 Expired`
//! Status, as from the real API server; so does a watch that falls too far
//! behind.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch as tokio_watch};

use super::error::ApiError;
use super::resources::ResourceType;
use super::store::{Change, ChangeKind, Filter, Store};
use super::table::{self, Include};

/// The watch request's parameters.
#[derive(Clone, Debug)]
pub struct WatchParams {
    /// `None`: start with the current objects as ADDED.
    pub from: Option<u64>,
    pub send_initial_events: bool,
    pub bookmarks: bool,
    pub timeout: Duration,
    /// Encode objects as one-row Tables (`kubectl get -w`).
    pub table: Option<Include>,
}

struct Watcher {
    rt: &'static ResourceType,
    filter: Filter,
    params: WatchParams,
    tx: mpsc::Sender<Bytes>,
}

fn line(kind: &str, object: Value) -> Bytes {
    let mut v =
        serde_json::to_vec(&json!({"type": kind, "object": object})).expect("JSON serializes");
    v.push(b'\n');
    Bytes::from(v)
}

impl Watcher {
    fn encode(&self, obj: Value) -> Value {
        match self.params.table {
            Some(include) => table::render(self.rt, &[obj], None, include),
            None => obj,
        }
    }

    /// The event a change makes for this watcher, if any.
    fn event(&self, c: &Change) -> Option<Bytes> {
        if c.storage != self.rt.storage {
            return None;
        }
        let now = self.rt.to_external(&c.object);
        let now_in = self.filter.matches(&now);
        let before_in = c
            .prev
            .as_ref()
            .is_some_and(|p| self.filter.matches(&self.rt.to_external(p)));
        let kind = match (c.kind, before_in, now_in) {
            (ChangeKind::Modified, false, true) => "ADDED",
            (ChangeKind::Modified, true, false) => "DELETED",
            (_, _, true) => c.kind.as_str(),
            _ => return None,
        };
        Some(line(kind, self.encode(now)))
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(
            "BOOKMARK",
            json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta}),
        )
    }

    async fn send(&self, b: Bytes) -> bool {
        self.tx.send(b).await.is_ok()
    }

    async fn run(
        self,
        store: Arc<Store>,
        initial: Vec<Arc<Change>>,
        start_rv: u64,
        mut rx: broadcast::Receiver<Arc<Change>>,
        bookmark_interval: Duration,
        mut shutdown: tokio_watch::Receiver<bool>,
    ) {
        for c in &initial {
            if let Some(b) = self.event(c)
                && !self.send(b).await
            {
                return;
            }
        }
        if self.params.send_initial_events && !self.send(self.bookmark(start_rv, true)).await {
            return;
        }
        let deadline = tokio::time::sleep(self.params.timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + bookmark_interval,
            bookmark_interval,
        );
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(c) => {
                        if let Some(b) = self.event(&c) && !self.send(b).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let e = ApiError::gone("too old resource version: the watch fell behind");
                        self.send(line("ERROR", e.status())).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if self.params.bookmarks => {
                    // Everything up to `rv` is in the channel: drain it first.
                    let rv = store.resource_version();
                    loop {
                        match rx.try_recv() {
                            Ok(c) => {
                                if let Some(b) = self.event(&c) && !self.send(b).await {
                                    return;
                                }
                            }
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(_) => {
                                let e = ApiError::gone("too old resource version: the watch fell behind");
                                self.send(line("ERROR", e.status())).await;
                                return;
                            }
                        }
                    }
                    if !self.send(self.bookmark(rv, false)).await {
                        return;
                    }
                }
                _ = &mut deadline => return,
                _ = shutdown.changed() => return,
                _ = self.tx.closed() => return,
            }
        }
    }
}

/// Starts a watch and returns the streaming response.
pub fn serve(
    store: Arc<Store>,
    rt: &'static ResourceType,
    filter: Filter,
    params: WatchParams,
    bookmark_interval: Duration,
    shutdown: tokio_watch::Receiver<bool>,
) -> Response {
    let (tx, rx_body) = mpsc::channel::<Bytes>(256);
    match store.watch(rt, params.from) {
        Err(e) => {
            let _ = tx.try_send(line("ERROR", e.status()));
            drop(tx);
        }
        Ok(start) => {
            let w = Watcher {
                rt,
                filter,
                params,
                tx,
            };
            tokio::spawn(w.run(
                store,
                start.initial,
                start.rv,
                start.rx,
                bookmark_interval,
                shutdown,
            ));
        }
    }
    let stream = futures::stream::unfold(rx_body, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(Body::from_stream(stream))
        .expect("valid response")
}
