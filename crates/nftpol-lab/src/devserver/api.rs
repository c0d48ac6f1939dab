//! Request routing: paths to resources, verbs to store operations.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::watch as tokio_watch;

use super::discovery;
use super::error::{ApiError, success_status};
use super::patch::{PatchType, apply_patch, parse_body};
use super::protobuf;
use super::resources::{self, ResourceType};
use super::selectors::{FieldSelector, LabelSelector};
use super::store::{Filter, Store, WriteOpts};
use super::table::{self, Include};
use super::validation;
use super::watch::{self, WatchParams};

/// Shared by every request.
#[derive(Clone)]
pub struct App {
    pub store: Arc<Store>,
    pub addr: SocketAddr,
    pub bookmark_interval: Duration,
    pub shutdown: tokio_watch::Receiver<bool>,
}

fn json_response(code: u16, v: &Value) -> Response {
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).expect("JSON serializes"),
    )
        .into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code, &e.status())
}

/// What a resource path names.
#[derive(Debug)]
enum Target {
    Collection {
        rt: &'static ResourceType,
        ns: Option<String>,
    },
    Object {
        rt: &'static ResourceType,
        ns: String,
        name: String,
        sub: Option<String>,
    },
}

fn resource_target(group: &str, version: &str, segs: &[&str]) -> Option<Target> {
    let find = |plural: &str| resources::find(group, version, plural);
    if segs.first() == Some(&"namespaces")
        && segs.len() >= 3
        && let Some(rt) = find(segs[2]).filter(|rt| rt.namespaced)
    {
        let ns = segs[1].to_string();
        return match segs.len() {
            3 => Some(Target::Collection { rt, ns: Some(ns) }),
            4 | 5 => Some(Target::Object {
                rt,
                ns,
                name: segs[3].to_string(),
                sub: segs.get(4).map(|s| s.to_string()),
            }),
            _ => None,
        };
    }
    let rt = find(segs.first()?)?;
    match segs.len() {
        1 => Some(Target::Collection { rt, ns: None }),
        2 | 3 if !rt.namespaced => Some(Target::Object {
            rt,
            ns: String::new(),
            name: segs[1].to_string(),
            sub: segs.get(2).map(|s| s.to_string()),
        }),
        _ => None,
    }
}

/// The one handler: discovery documents and resources.
pub async fn handle(
    State(app): State<App>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let query: HashMap<String, String> = Query::<HashMap<String, String>>::try_from_uri(&uri)
        .map(|q| q.0)
        .unwrap_or_default();
    tracing::debug!(%method, %uri, "request");
    let doc = match segs.as_slice() {
        ["version"] => Some(discovery::version()),
        ["api"] => Some(discovery::api_versions(app.addr)),
        ["apis"] => Some(discovery::api_group_list()),
        ["api", v] => discovery::resource_list("", v),
        ["apis", g] => discovery::api_group(g),
        ["apis", g, v] => discovery::resource_list(g, v),
        ["openapi", "v3"] => Some(discovery::openapi_v3_index()),
        ["openapi", "v3", "api", v] => discovery::openapi_v3_group_version("", v),
        ["openapi", "v3", "apis", g, v] => discovery::openapi_v3_group_version(g, v),
        ["devserver", "compact"] if method == Method::POST => {
            // Admin endpoint (not Kubernetes): forget the watch history.
            app.store.compact_history();
            let rv = app.store.resource_version();
            return json_response(200, &json!({"resourceVersion": rv.to_string()}));
        }
        ["healthz" | "livez" | "readyz"] => {
            return (StatusCode::OK, "ok").into_response();
        }
        _ => None,
    };
    if let Some(doc) = doc {
        return if method == Method::GET {
            json_response(200, &doc)
        } else {
            error_response(&ApiError::method_not_allowed())
        };
    }
    let target = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => resource_target("", v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => resource_target(g, v, rest),
        _ => None,
    };
    let Some(target) = target else {
        return error_response(&ApiError::path_not_found());
    };
    match serve_resource(&app, &method, target, &query, &headers, &body) {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

fn parse_object(rt: &ResourceType, headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    if ct.contains("protobuf") || ct.contains("cbor") {
        // kubectl's typed clients (`create namespace`, `run`) send protobuf.
        if rt.plural == "namespaces"
            && let Some(v) = protobuf::decode_namespace(body)
        {
            return Ok(v);
        }
        return Err(ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml (this development server does not decode {ct} for {})",
                rt.plural
            ),
        ));
    }
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    let v: Value = if ct.contains("yaml") {
        serde_saphyr::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
    } else {
        serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))?
    };
    if !v.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(v)
}

/// Checks that a body's kind and apiVersion (when given) name this resource.
fn check_type(rt: &ResourceType, v: &Value) -> Result<(), ApiError> {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or(rt.kind);
    let av = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| rt.api_version());
    if kind != rt.kind || av != rt.api_version() {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({av}) and kind ({kind}) do not match the resource {}/{}",
            rt.api_version(),
            rt.kind
        )));
    }
    Ok(())
}

fn check_namespace(rt: &ResourceType, ns: &str, v: &Value) -> Result<(), ApiError> {
    if let Some(given) = v.pointer("/metadata/namespace").and_then(Value::as_str)
        && rt.namespaced
        && !given.is_empty()
        && given != ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(())
}

/// Checks field names by `fieldValidation` (Strict: 400; Warn, the
/// default: a warning; Ignore), after decoding as the API type.
fn field_check(
    rt: &ResourceType,
    obj: &mut Value,
    query: &HashMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<(), ApiError> {
    let unknown = validation::check_fields(rt, obj)?;
    if unknown.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    match query.get("fieldValidation").map(String::as_str) {
        Some("Ignore") => Ok(()),
        Some("Strict") => Err(ApiError::bad_request(format!(
            "strict decoding error: {}",
            list.join(", ")
        ))),
        _ => {
            warnings.extend(list);
            Ok(())
        }
    }
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = header::HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn filter_of(query: &HashMap<String, String>, ns: Option<String>) -> Result<Filter, ApiError> {
    Ok(Filter {
        namespace: ns,
        labels: LabelSelector::parse(query.get("labelSelector").map_or("", String::as_str))?,
        fields: FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str))?,
    })
}

fn truthy(query: &HashMap<String, String>, k: &str) -> bool {
    query
        .get(k)
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True"))
}

fn serve_resource(
    app: &App,
    method: &Method,
    target: Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let store = &app.store;
    let opts = WriteOpts {
        dry_run: query.get("dryRun").is_some_and(|v| v == "All"),
        status: false,
    };
    let table = table::wants_table(headers)
        .then(|| Include::parse(query.get("includeObject").map(String::as_str)));
    match target {
        Target::Collection { rt, ns } => match *method {
            Method::GET => {
                let filter = filter_of(query, ns)?;
                if truthy(query, "watch") {
                    return serve_watch(app, rt, filter, query, table);
                }
                let (items, rv) = store.list(rt, &filter);
                let doc = match table {
                    Some(include) => table::render(rt, &items, Some(rv), include),
                    None => json!({
                        "kind": format!("{}List", rt.kind),
                        "apiVersion": rt.api_version(),
                        "metadata": {"resourceVersion": rv.to_string()},
                        "items": items,
                    }),
                };
                Ok(json_response(200, &doc))
            }
            Method::POST => {
                let ns = match (rt.namespaced, ns) {
                    (true, Some(ns)) => ns,
                    (true, None) => return Err(ApiError::method_not_allowed()),
                    (false, _) => String::new(),
                };
                let mut obj = parse_object(rt, headers, body)?;
                check_type(rt, &obj)?;
                check_namespace(rt, &ns, &obj)?;
                let mut warnings = Vec::new();
                field_check(rt, &mut obj, query, &mut warnings)?;
                let created = store.create(rt, &ns, rt.to_internal(&obj), opts)?;
                Ok(with_warnings(
                    json_response(201, &rt.to_external(&created)),
                    &warnings,
                ))
            }
            Method::DELETE => {
                let filter = filter_of(query, ns)?;
                let deleted = store.delete_collection(rt, &filter, opts);
                let items: Vec<Value> = deleted.iter().map(|o| rt.to_external(o)).collect();
                Ok(json_response(
                    200,
                    &json!({
                        "kind": format!("{}List", rt.kind),
                        "apiVersion": rt.api_version(),
                        "metadata": {"resourceVersion": store.resource_version().to_string()},
                        "items": items,
                    }),
                ))
            }
            _ => Err(ApiError::method_not_allowed()),
        },
        Target::Object { rt, ns, name, sub } => {
            let status = match sub.as_deref() {
                None => false,
                Some("status") if rt.status_subresource => true,
                Some(_) => return Err(ApiError::path_not_found()),
            };
            let opts = WriteOpts { status, ..opts };
            match *method {
                Method::GET => {
                    let obj = rt.to_external(&store.get(rt, &ns, &name)?);
                    let doc = match table {
                        Some(include) => table::render(rt, &[obj], None, include),
                        None => obj,
                    };
                    Ok(json_response(200, &doc))
                }
                Method::PUT => {
                    let mut obj = parse_object(rt, headers, body)?;
                    check_type(rt, &obj)?;
                    let mut warnings = Vec::new();
                    field_check(rt, &mut obj, query, &mut warnings)?;
                    let internal = rt.to_internal(&obj);
                    let updated = store.update(rt, &ns, &name, opts, |_| Ok(internal))?;
                    Ok(with_warnings(
                        json_response(200, &rt.to_external(&updated)),
                        &warnings,
                    ))
                }
                Method::PATCH => patch(app, rt, &ns, &name, opts, query, headers, body),
                Method::DELETE => {
                    let delete_opts: Option<Value> = if body.iter().all(u8::is_ascii_whitespace) {
                        None
                    } else {
                        serde_json::from_slice(body).ok()
                    };
                    let dry_run = opts.dry_run
                        || delete_opts
                            .as_ref()
                            .and_then(|o| o.get("dryRun"))
                            .and_then(Value::as_array)
                            .is_some_and(|a| a.iter().any(|x| x == "All"));
                    let pre = delete_opts.as_ref().and_then(|o| o.get("preconditions"));
                    let deleted =
                        store.delete(rt, &ns, &name, pre, WriteOpts { dry_run, ..opts })?;
                    let uid = deleted.pointer("/metadata/uid").and_then(Value::as_str);
                    Ok(json_response(200, &success_status(rt, &name, uid)))
                }
                _ => Err(ApiError::method_not_allowed()),
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn patch(
    app: &App,
    rt: &'static ResourceType,
    ns: &str,
    name: &str,
    opts: WriteOpts,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let pt =
        PatchType::from_content_type(ct).ok_or_else(|| ApiError::unsupported_media_type(ct))?;
    let patch = parse_body(pt, body)?;
    if pt == PatchType::Apply {
        if query.get("fieldManager").is_none_or(String::is_empty) {
            return Err(ApiError::bad_request(
                "PATCH requests with Content-Type application/apply-patch+yaml require fieldManager to be set",
            ));
        }
        check_type(rt, &patch)?;
        check_namespace(rt, ns, &patch)?;
    }
    let mut warnings = Vec::new();
    let result = app.store.update(rt, ns, name, opts, |old| {
        let mut patched = apply_patch(pt, &rt.to_external(old), &patch)?;
        field_check(rt, &mut patched, query, &mut warnings)?;
        Ok(rt.to_internal(&patched))
    });
    let obj = match result {
        Err(e) if e.code == 404 && pt == PatchType::Apply && !opts.status => {
            // Server-side apply creates what does not exist yet.
            let mut obj = patch.clone();
            obj["metadata"]["name"] = json!(name);
            field_check(rt, &mut obj, query, &mut warnings)?;
            let created = app.store.create(rt, ns, rt.to_internal(&obj), opts)?;
            return Ok(with_warnings(
                json_response(201, &rt.to_external(&created)),
                &warnings,
            ));
        }
        other => other?,
    };
    Ok(with_warnings(
        json_response(200, &rt.to_external(&obj)),
        &warnings,
    ))
}

fn serve_watch(
    app: &App,
    rt: &'static ResourceType,
    filter: Filter,
    query: &HashMap<String, String>,
    table: Option<Include>,
) -> Result<Response, ApiError> {
    let send_initial_events = truthy(query, "sendInitialEvents");
    let from = match query.get("resourceVersion").map(String::as_str) {
        _ if send_initial_events => None,
        None | Some("") | Some("0") => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("invalid resourceVersion {s:?}: not an integer"))
        })?),
    };
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let params = WatchParams {
        from,
        send_initial_events,
        bookmarks: truthy(query, "allowWatchBookmarks"),
        timeout,
        table,
    };
    Ok(watch::serve(
        app.store.clone(),
        rt,
        filter,
        params,
        app.bookmark_interval,
        app.shutdown.clone(),
    ))
}
