//! The in-memory development API server, driven by kube-rs and by kubectl.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Event as CoreEvent, Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::watcher;
use nftpol_lab::devserver::{Config, DevServer, Handle};
use serde_json::{Value, json};

async fn start() -> Handle {
    DevServer::start(Config {
        bookmark_interval: Duration::from_millis(100),
        ..Config::default()
    })
    .await
    .expect("devserver starts")
}

fn pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "app", "image": "nginx",
            "ports": [{"name": "http", "containerPort": 80}]}]},
    }))
    .unwrap()
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// Collects watch events until `n` non-bookmark events arrived (or a timeout).
async fn collect_events(
    api: &Api<Pod>,
    wp: &WatchParams,
    rv: &str,
    n: usize,
) -> (Vec<WatchEvent<Pod>>, usize) {
    let mut stream = api.watch(wp, rv).await.unwrap().boxed();
    let (mut events, mut bookmarks) = (Vec::new(), 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while events.len() < n {
        let next = tokio::time::timeout_at(deadline, stream.try_next()).await;
        match next {
            Ok(Ok(Some(WatchEvent::Bookmark(_)))) => bookmarks += 1,
            Ok(Ok(Some(ev))) => events.push(ev),
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(e)) => panic!("watch failed: {e}"),
        }
    }
    (events, bookmarks)
}

#[tokio::test]
async fn create_list_watch_with_bookmarks() {
    let server = start().await;
    let client = server.client().unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    let a = pods
        .create(&PostParams::default(), &pod("a", json!({"app": "web"})))
        .await
        .unwrap();
    let meta = &a.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    let rv_a: u64 = meta.resource_version.as_deref().unwrap().parse().unwrap();
    pods.create(&PostParams::default(), &pod("b", json!({"app": "db"})))
        .await
        .unwrap();

    // 409 AlreadyExists; 404 for a namespace that does not exist.
    let e = api_error(
        pods.create(&PostParams::default(), &pod("a", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    let nowhere: Api<Pod> = Api::namespaced(client.clone(), "nowhere");
    let e = api_error(
        nowhere
            .create(&PostParams::default(), &pod("a", json!({})))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);

    // generateName.
    let mut g = pod("", json!({}));
    g.metadata.name = None;
    g.metadata.generate_name = Some("gen-".into());
    let g = pods.create(&PostParams::default(), &g).await.unwrap();
    assert!(g.metadata.name.unwrap().starts_with("gen-"));

    // Lists, with equality and set-based label selectors.
    let all = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), 3);
    let list_rv: u64 = all.metadata.resource_version.unwrap().parse().unwrap();
    assert_eq!(list_rv, server.resource_version());
    let web = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(web.items.len(), 1);
    let set = pods
        .list(&ListParams::default().labels("app in (web,db)"))
        .await
        .unwrap();
    assert_eq!(set.items.len(), 2);
    let all_ns: Api<Pod> = Api::all(client.clone());
    let byname = all_ns
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(byname.items.len(), 1);

    // A watch from a's resourceVersion replays b and gen-, then follows live changes.
    let wp = WatchParams::default().timeout(3);
    let watch_api = pods.clone();
    let rv = rv_a.to_string();
    let watching = tokio::spawn(async move { collect_events(&watch_api, &wp, &rv, 4).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await
    .unwrap();
    pods.delete("b", &DeleteParams::default()).await.unwrap();
    let (events, bookmarks) = watching.await.unwrap();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(p) => format!("ADDED {}", p.metadata.name.as_deref().unwrap()),
            WatchEvent::Modified(p) => format!("MODIFIED {}", p.metadata.name.as_deref().unwrap()),
            WatchEvent::Deleted(p) => format!("DELETED {}", p.metadata.name.as_deref().unwrap()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds[0], "ADDED b");
    assert!(kinds[1].starts_with("ADDED gen-"), "{kinds:?}");
    assert_eq!(kinds[2..], ["MODIFIED a", "DELETED b"]);
    assert!(bookmarks >= 1, "bookmarks every 100 ms, got {bookmarks}");

    // A watch that has nothing to replay still sees bookmarks, with the current resourceVersion.
    let now = server.resource_version().to_string();
    let mut stream = pods
        .watch(&WatchParams::default().timeout(2), &now)
        .await
        .unwrap()
        .boxed();
    match tokio::time::timeout(Duration::from_secs(2), stream.try_next()).await {
        Ok(Ok(Some(WatchEvent::Bookmark(b)))) => assert_eq!(b.metadata.resource_version, now),
        other => panic!("expected a bookmark, got {other:?}"),
    }
    server.shutdown().await;
}

#[tokio::test]
async fn watch_from_compacted_resource_version_gets_410() {
    let server = start().await;
    let pods: Api<Pod> = Api::namespaced(server.client().unwrap(), "default");
    let a = pods
        .create(&PostParams::default(), &pod("a", json!({})))
        .await
        .unwrap();
    let old_rv = a.metadata.resource_version.unwrap();
    pods.create(&PostParams::default(), &pod("b", json!({})))
        .await
        .unwrap();

    // resourceVersion "0": the current objects as ADDED first.
    let (events, _) = collect_events(&pods, &WatchParams::default().timeout(1), "0", 2).await;
    assert!(
        events.iter().all(|e| matches!(e, WatchEvent::Added(_))),
        "{events:?}"
    );
    assert_eq!(events.len(), 2);

    // Still in the history: replayed.
    let (events, _) = collect_events(&pods, &WatchParams::default().timeout(1), &old_rv, 1).await;
    assert!(
        matches!(&events[..], [WatchEvent::Added(p)] if p.metadata.name.as_deref() == Some("b"))
    );

    server.compact_history();
    let (events, _) = collect_events(&pods, &WatchParams::default().timeout(1), &old_rv, 1).await;
    match &events[..] {
        [WatchEvent::Error(s)] => {
            assert_eq!(s.code, 410);
            assert_eq!(s.reason, "Expired");
            assert!(
                s.message.contains("too old resource version"),
                "{}",
                s.message
            );
        }
        other => panic!("expected one ERROR 410, got {other:?}"),
    }
    // The current resourceVersion is still fine.
    let now = server.resource_version().to_string();
    let mut stream = pods
        .watch(&WatchParams::default().timeout(1), &now)
        .await
        .unwrap()
        .boxed();
    assert!(!matches!(
        stream.try_next().await,
        Ok(Some(WatchEvent::Error(_)))
    ));
    server.shutdown().await;
}

#[tokio::test]
async fn strategic_merge_patch_like_kubectl() {
    let server = start().await;
    let pods: Api<Pod> = Api::namespaced(server.client().unwrap(), "default");
    pods.create(
        &PostParams::default(),
        &pod("a", json!({"app": "web", "old": "x"})),
    )
    .await
    .unwrap();
    let before = pods.get("a").await.unwrap();

    // What `kubectl label pod a tier=db old-` sends.
    let patched = pods
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"tier": "db", "old": null}}})),
        )
        .await
        .unwrap();
    let labels = patched.metadata.labels.clone().unwrap();
    assert_eq!(labels.get("tier").map(String::as_str), Some("db"));
    assert_eq!(labels.get("app").map(String::as_str), Some("web"));
    assert!(!labels.contains_key("old"));
    assert_ne!(
        patched.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(patched.metadata.generation, Some(1), "labels are not spec");

    // What `kubectl apply` sends for a changed container image: the container
    // list merges by name, and the directives are not stored.
    let patched = pods
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
                "containers": [{"name": "app", "image": "nginx:2"}, {"name": "side", "image": "busybox"}],
            }})),
        )
        .await
        .unwrap();
    let spec = patched.spec.unwrap();
    assert_eq!(spec.containers.len(), 2);
    assert_eq!(spec.containers[0].image.as_deref(), Some("nginx:2"));
    assert_eq!(
        spec.containers[0].ports.as_ref().unwrap()[0].container_port,
        80
    );
    assert_eq!(patched.metadata.generation, Some(2), "spec changed");

    // A patch that changes nothing keeps the resourceVersion.
    let again = pods
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Strategic(json!({"metadata": {"labels": {"tier": "db"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        patched.metadata.resource_version
    );

    // Optimistic concurrency: a stale resourceVersion is a 409 Conflict.
    let mut stale = before.clone();
    stale.metadata.labels = Some([("z".to_string(), "1".to_string())].into());
    let e = api_error(
        pods.replace("a", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));

    // Server-side apply creates (and later merges) the applied fields.
    let mut applied = pod("c", json!({"app": "applied"}));
    applied.metadata.namespace = Some("default".into());
    let c = pods
        .patch("c", &PatchParams::apply("test"), &Patch::Apply(&applied))
        .await
        .unwrap();
    assert_eq!(c.metadata.labels.unwrap()["app"], "applied");
    server.shutdown().await;
}

#[tokio::test]
async fn status_subresource() {
    let server = start().await;
    let pods: Api<Pod> = Api::namespaced(server.client().unwrap(), "default");
    pods.create(&PostParams::default(), &pod("a", json!({"app": "web"})))
        .await
        .unwrap();
    let created = pods.get("a").await.unwrap();
    assert_eq!(
        created.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );

    let status = json!({"status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]},
        "metadata": {"labels": {"ignored": "yes"}}});
    let p = pods
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    let st = p.status.unwrap();
    assert_eq!(st.pod_ip.as_deref(), Some("10.244.1.5"));
    assert_eq!(st.phase.as_deref(), Some("Running"));
    assert!(
        !p.metadata.labels.unwrap().contains_key("ignored"),
        "the status subresource changes only status"
    );
    assert_eq!(p.metadata.generation, Some(1));

    // The main resource ignores status changes.
    let p = pods
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Failed"}, "metadata": {"labels": {"b": "1"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(p.metadata.labels.unwrap()["b"], "1");

    // NetworkPolicies have no status subresource.
    let raw = reqwest_like(
        &server,
        "GET",
        "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/x/status",
        None,
    )
    .await;
    assert_eq!(raw.0, 404);
    server.shutdown().await;
}

/// A plain HTTP/1.1 request (no client library), for what kube-rs does not send.
async fn reqwest_like(
    server: &Handle,
    method: &str,
    path: &str,
    body: Option<(&str, &str)>,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (ct, b) = body.unwrap_or(("application/json", ""));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
        server.addr,
        b.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let code: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    (code, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn json_patch_and_admin_compaction() {
    let server = start().await;
    let pods: Api<Pod> = Api::namespaced(server.client().unwrap(), "default");
    pods.create(&PostParams::default(), &pod("a", json!({"app": "web"})))
        .await
        .unwrap();
    let (code, obj) = reqwest_like(
        &server,
        "PATCH",
        "/api/v1/namespaces/default/pods/a",
        Some((
            "application/json-patch+json",
            r#"[{"op":"add","path":"/metadata/labels/k","value":"v"}]"#,
        )),
    )
    .await;
    assert_eq!(code, 200, "{obj}");
    assert_eq!(obj["metadata"]["labels"]["k"], "v");
    let (code, obj) = reqwest_like(
        &server,
        "PATCH",
        "/api/v1/namespaces/default/pods/a",
        Some((
            "application/json-patch+json",
            r#"[{"op":"test","path":"/metadata/labels/k","value":"w"}]"#,
        )),
    )
    .await;
    assert_eq!((code, obj["kind"].as_str()), (422, Some("Status")));
    let (code, obj) = reqwest_like(&server, "POST", "/devserver/compact", None).await;
    assert_eq!(code, 200);
    assert_eq!(
        obj["resourceVersion"],
        server.resource_version().to_string()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn network_policy_defaulting_and_validation() {
    let server = start().await;
    let client = server.client().unwrap();
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), "default");
    let np: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "web"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                 "ingress": [{"ports": [{"port": 80}]}],
                 "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]},
    }))
    .unwrap();
    let created = nps.create(&PostParams::default(), &np).await.unwrap();
    let spec = created.spec.unwrap();
    assert_eq!(spec.policy_types.unwrap(), ["Ingress", "Egress"]);
    let ingress = spec.ingress.unwrap();
    let port = &ingress[0].ports.as_ref().unwrap()[0];
    assert_eq!(port.protocol.as_deref(), Some("TCP"));
    assert_eq!(created.metadata.generation, Some(1));

    // A spec change bumps the generation.
    let p = nps
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"egress": []}})),
        )
        .await
        .unwrap();
    assert_eq!(p.metadata.generation, Some(2));

    let bad: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "bad"},
        "spec": {"podSelector": {}, "ingress": [{"from": [
            {"ipBlock": {"cidr": "10.0.0.0/8"}},
            {"ipBlock": {"cidr": "10.0.0.300/8"}}]}]},
    }))
    .unwrap();
    let e = api_error(nps.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    let causes = e.details.unwrap().causes;
    assert_eq!(causes.len(), 1);
    assert_eq!(causes[0].field, "spec.ingress[0].from[1].ipBlock.cidr");
    assert!(
        e.message.contains("spec.ingress[0].from[1].ipBlock.cidr"),
        "{}",
        e.message
    );

    // Namespaces get their name label; events can be posted and listed.
    let nsapi: Api<Namespace> = Api::all(client.clone());
    let ns = nsapi.get("default").await.unwrap();
    assert_eq!(
        ns.metadata.labels.unwrap()["kubernetes.io/metadata.name"],
        "default"
    );
    let events: Api<CoreEvent> = Api::namespaced(client, "default");
    let ev: CoreEvent = serde_json::from_value(json!({
        "metadata": {"generateName": "web."},
        "involvedObject": {"kind": "NetworkPolicy", "name": "web", "namespace": "default"},
        "reason": "Compiled", "message": "ok", "type": "Normal",
    }))
    .unwrap();
    events.create(&PostParams::default(), &ev).await.unwrap();
    assert_eq!(
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    server.shutdown().await;
}

#[tokio::test]
async fn kube_runtime_watcher_sees_changes_and_relists_after_410() {
    let server = start().await;
    let client = server.client().unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("first", json!({})))
        .await
        .unwrap();

    // Bookmarks off and a 1 s watch timeout: the watcher re-watches from the
    // last Pod resourceVersion it saw, which compaction makes too old.
    let cfg = watcher::Config::default().timeout(1).disable_bookmarks();
    let mut stream = watcher(pods.clone(), cfg).boxed();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("a watcher event in time")
            .transpose()
            .expect("the stream goes on")
    };
    let name = |p: &Pod| p.metadata.name.clone().unwrap();
    assert!(matches!(next().await.unwrap(), watcher::Event::Init));
    assert!(matches!(next().await.unwrap(), watcher::Event::InitApply(p) if name(&p) == "first"));
    assert!(matches!(next().await.unwrap(), watcher::Event::InitDone));

    pods.create(&PostParams::default(), &pod("a", json!({})))
        .await
        .unwrap();
    assert!(matches!(next().await.unwrap(), watcher::Event::Apply(p) if name(&p) == "a"));
    pods.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"m": "1"}}})),
    )
    .await
    .unwrap();
    assert!(
        matches!(next().await.unwrap(), watcher::Event::Apply(p) if p.metadata.labels.as_ref().unwrap()["m"] == "1")
    );
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(matches!(next().await.unwrap(), watcher::Event::Delete(p) if name(&p) == "a"));

    // Something else moves the resourceVersion on, then the history goes.
    let nsapi: Api<Namespace> = Api::all(client);
    nsapi
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "other"}})).unwrap(),
        )
        .await
        .unwrap();
    server.compact_history();
    // The re-watch gets 410 (which the watcher reports), then it lists again.
    match next().await {
        Err(watcher::Error::WatchError(s)) => assert_eq!(s.code, 410),
        other => panic!("expected the 410 watch error, got {other:?}"),
    }
    assert!(matches!(next().await.unwrap(), watcher::Event::Init));
    assert!(matches!(next().await.unwrap(), watcher::Event::InitApply(p) if name(&p) == "first"));
    assert!(matches!(next().await.unwrap(), watcher::Event::InitDone));

    // Deleting a namespace deletes what is in it, and watchers see it.
    nsapi
        .delete("default", &DeleteParams::default())
        .await
        .unwrap();
    assert!(matches!(next().await.unwrap(), watcher::Event::Delete(p) if name(&p) == "first"));
    server.shutdown().await;
}

fn kubectl(kubeconfig: &Path, cache: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("/usr/bin/kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .current_dir(nftpol_lab::fixtures::repo_path("."))
        .output()
        .expect("kubectl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_end_to_end() {
    if !Path::new("/usr/bin/kubectl").exists() {
        eprintln!("SKIP kubectl_end_to_end: /usr/bin/kubectl is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("nftpol-devserver-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kc = dir.join("kubeconfig");
    let cache = dir.join("cache");
    let server = DevServer::start(Config {
        kubeconfig_out: Some(kc.clone()),
        ..Config::default()
    })
    .await
    .unwrap();
    // The server runs on the runtime's worker threads; kubectl blocks this one.
    let run = |args: &[&str]| kubectl(&kc, &cache, args);
    let must = |args: &[&str]| {
        let (ok, out) = run(args);
        assert!(ok, "kubectl {} failed:\n{out}", args.join(" "));
        out
    };

    let v = must(&["version"]);
    assert!(v.contains(nftpol_lab::devserver::GIT_VERSION), "{v}");
    let out = must(&["apply", "-f", "examples/cluster.yaml"]);
    assert!(
        out.contains("pod/frontend created") && out.contains("node/node-1 created"),
        "{out}"
    );
    let out = must(&["apply", "-f", "examples/policies/"]);
    assert!(
        out.contains("networkpolicy.networking.k8s.io/frontend-to-backend created"),
        "{out}"
    );
    // Again: nothing changes.
    let out = must(&["apply", "-f", "examples/policies/"]);
    assert!(out.contains("frontend-to-backend unchanged"), "{out}");

    // Typed kubectl commands (protobuf bodies for namespaces) and server-side apply.
    let out = must(&["create", "namespace", "scratch"]);
    assert!(out.contains("namespace/scratch created"), "{out}");
    let out = must(&[
        "apply",
        "--server-side",
        "-f",
        "examples/policies/01-default-deny-ingress.yaml",
    ]);
    assert!(out.contains("serverside-applied"), "{out}");

    let out = must(&["get", "networkpolicies", "-A"]);
    assert!(
        out.lines().next().unwrap().contains("POD-SELECTOR"),
        "{out}"
    );
    assert!(
        out.contains("shop") && out.contains("frontend-to-backend") && out.contains("app=backend"),
        "{out}"
    );
    let out = must(&["get", "pods", "-n", "shop", "-o", "wide"]);
    assert!(
        out.contains("10.244.1.10") && out.contains("node-1"),
        "{out}"
    );

    let out = must(&["label", "pod", "-n", "shop", "frontend", "nftpol-test=yes"]);
    assert!(out.contains("pod/frontend labeled"), "{out}");
    let out = must(&[
        "get",
        "pods",
        "-n",
        "shop",
        "-l",
        "nftpol-test=yes",
        "-o",
        "name",
    ]);
    assert_eq!(out.trim(), "pod/frontend");

    // A policy the API server would reject.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: shop}\n\
         spec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/33}\n",
    )
    .unwrap();
    let (ok, out) = run(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(
        !ok && out.contains("spec.ingress[0].from[0].ipBlock.cidr"),
        "{out}"
    );

    let out = must(&["delete", "-f", "examples/policies/"]);
    assert!(
        out.contains("networkpolicy.networking.k8s.io \"frontend-to-backend\" deleted"),
        "{out}"
    );
    let out = must(&["get", "networkpolicies", "-A"]);
    assert!(out.contains("No resources found"), "{out}");
    let out = must(&["delete", "namespace", "staging"]);
    assert!(out.contains("deleted"), "{out}");
    let out = must(&["get", "pods", "-A", "-o", "name"]);
    assert!(
        !out.contains("staging") && out.contains("pod/frontend"),
        "{out}"
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn kube_runtime_recorder_posts_events() {
    use kube::Resource;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let server = start().await;
    let client = server.client().unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p = pods
        .create(&PostParams::default(), &pod("a", json!({})))
        .await
        .unwrap();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "nftpol".into(),
            instance: Some("node-1".into()),
        },
    );
    let ev = Event {
        type_: EventType::Normal,
        reason: "PolicyApplied".into(),
        note: Some("generation 1".into()),
        action: "Apply".into(),
        secondary: None,
    };
    // The second publish of the same event patches its series.
    recorder.publish(&ev, &p.object_ref(&())).await.unwrap();
    recorder.publish(&ev, &p.object_ref(&())).await.unwrap();

    // events.k8s.io/v1 and core/v1 are two views of one stored Event.
    let new: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), "default");
    let items = new.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].series.as_ref().map(|s| s.count), Some(2));
    let core: Api<CoreEvent> = Api::namespaced(client, "default");
    let items = core
        .list(&ListParams::default().fields("involvedObject.name=a,reason=PolicyApplied"))
        .await
        .unwrap()
        .items;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].message.as_deref(), Some("generation 1"));
    assert_eq!(items[0].reporting_component.as_deref(), Some("nftpol"));
    server.shutdown().await;
}

#[tokio::test]
async fn kube_runtime_watcher_with_streaming_lists() {
    let server = start().await;
    let pods: Api<Pod> = Api::namespaced(server.client().unwrap(), "default");
    pods.create(&PostParams::default(), &pod("a", json!({})))
        .await
        .unwrap();
    // sendInitialEvents=true: ADDED for what exists, then a BOOKMARK marking the end.
    let mut stream = watcher(pods.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("a watcher event in time")
            .expect("no watcher error")
            .expect("the stream goes on")
    };
    assert!(matches!(next().await, watcher::Event::Init));
    assert!(
        matches!(next().await, watcher::Event::InitApply(p) if p.metadata.name.as_deref() == Some("a"))
    );
    assert!(matches!(next().await, watcher::Event::InitDone));
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(matches!(next().await, watcher::Event::Delete(_)));
    server.shutdown().await;
}
