//! `/healthz` (alive), `/readyz` (stores listed, watchers healthy, last
//! apply succeeded), `/metrics` (Prometheus text) and `/status` (JSON: the
//! resourceVersion up to which changes are enforced).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Shared;

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(shared)
}

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    if let Err(e) = axum::serve(listener, router(shared)).await {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    match shared.readiness() {
        Ok(()) => "ok\n".into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    let mut status = shared.status();
    status.ready = shared.readiness().is_ok();
    // Through a JSON value, whose keys come out sorted, as always served.
    let body = serde_json::to_value(status).expect("status serializes");
    axum::Json(body).into_response()
}
