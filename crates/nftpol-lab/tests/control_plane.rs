//! The real control plane (etcd and kube-apiserver, built from their Go
//! modules by `k8s/build`) and the RBAC that deploy/nftpol.yaml ships: what
//! nftpol's service account may and may not do, as the real authorizer
//! answers (`kubectl auth can-i --as=...` asks the same question).
//!
//! Needs Go to build the components once (cached under target/k8s/), or
//! NFTPOL_K8S_BIN naming a folder that has them; prints why and passes
//! elsewhere. No root needed: both run on loopback.

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::PostParams;
use nftpol_lab::control_plane::{ControlPlane, binaries};
use nftpol_lab::fixtures::repo_path;

const SERVICE_ACCOUNT: &str = "system:serviceaccount:kube-system:nftpol";

fn control_plane(test: &str) -> Option<ControlPlane> {
    match binaries().expect("build kube-apiserver and etcd (k8s/build)") {
        Some(bin) => Some(
            ControlPlane::start(&bin, Duration::from_secs(120))
                .expect("start etcd and kube-apiserver"),
        ),
        None => {
            eprintln!(
                "skipping {test}: no Go toolchain to build kube-apiserver and etcd (k8s/build)"
            );
            None
        }
    }
}

/// Whether the real authorizer lets nftpol's service account do `verb` on
/// `resource` of `group` (cluster-wide).
async fn can(client: &kube::Client, verb: &str, group: &str, resource: &str) -> bool {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(SERVICE_ACCOUNT.into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:kube-system".into(),
                "system:authenticated".into(),
            ]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let answer = api
        .create(&PostParams::default(), &review)
        .await
        .expect("a SubjectAccessReview");
    answer.status.expect("a status").allowed
}

/// The ServiceAccount, ClusterRole and ClusterRoleBinding of
/// deploy/nftpol.yaml, created as they are written.
async fn apply_shipped_rbac(client: &kube::Client) {
    let text =
        std::fs::read_to_string(repo_path("deploy/nftpol.yaml")).expect("deploy/nftpol.yaml");
    let mut kinds = Vec::new();
    for doc in text.split("\n---\n") {
        let value: serde_json::Value = serde_saphyr::from_str(doc).expect("a YAML document");
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let pp = PostParams::default();
        match kind.as_str() {
            "ServiceAccount" => {
                let sa: ServiceAccount = serde_json::from_value(value).unwrap();
                let api: Api<ServiceAccount> = Api::namespaced(client.clone(), "kube-system");
                // kube-system is made by the API server itself, just after it
                // is ready.
                let mut tries = 0;
                while let Err(e) = api.create(&pp, &sa).await {
                    tries += 1;
                    assert!(tries < 50, "create the ServiceAccount: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            "ClusterRole" => {
                let role: ClusterRole = serde_json::from_value(value).unwrap();
                Api::<ClusterRole>::all(client.clone())
                    .create(&pp, &role)
                    .await
                    .expect("create the ClusterRole");
            }
            "ClusterRoleBinding" => {
                let binding: ClusterRoleBinding = serde_json::from_value(value).unwrap();
                Api::<ClusterRoleBinding>::all(client.clone())
                    .create(&pp, &binding)
                    .await
                    .expect("create the ClusterRoleBinding");
            }
            _ => continue,
        }
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"],
        "deploy/nftpol.yaml ships these"
    );
}

#[test]
fn the_shipped_rbac_lets_nftpol_watch_and_report_and_nothing_more() {
    let Some(plane) =
        control_plane("the_shipped_rbac_lets_nftpol_watch_and_report_and_nothing_more")
    else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = plane.client().await.expect("an admin client");
        let version = client.apiserver_version().await.expect("/version");
        assert_eq!(
            version.git_version, "v1.37.2",
            "the API server built from k8s.io/kubernetes v1.37.2"
        );

        // Without the RBAC the account may do nothing of it: the reviews
        // below tell allowed from denied.
        assert!(!can(&client, "list", "", "pods").await);

        apply_shipped_rbac(&client).await;
        let allowed = [
            ("list", "", "pods"),
            ("watch", "", "pods"),
            ("list", "", "namespaces"),
            ("watch", "", "namespaces"),
            ("list", "networking.k8s.io", "networkpolicies"),
            ("watch", "networking.k8s.io", "networkpolicies"),
            ("create", "events.k8s.io", "events"),
            ("patch", "events.k8s.io", "events"),
        ];
        for (verb, group, resource) in allowed {
            assert!(
                can(&client, verb, group, resource).await,
                "nftpol must be able to {verb} {resource}.{group}"
            );
        }
        let denied = [
            ("get", "", "secrets"),
            ("list", "", "secrets"),
            ("update", "networking.k8s.io", "networkpolicies"),
            ("delete", "", "pods"),
            ("create", "", "pods"),
            ("patch", "", "namespaces"),
        ];
        for (verb, group, resource) in denied {
            assert!(
                !can(&client, verb, group, resource).await,
                "nftpol must not be able to {verb} {resource}.{group}"
            );
        }
    });
}

#[test]
fn the_controllers_warning_events_are_accepted_and_shown_as_kubectl_shows_them() {
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    use kube::Resource;
    use kube::api::ListParams;
    use nftpol::watch::events::{EventWriter, Warning};

    let Some(plane) = control_plane(
        "the_controllers_warning_events_are_accepted_and_shown_as_kubectl_shows_them",
    ) else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = plane.client().await.expect("an admin client");
        let policy: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "default", "name": "deny-all"},
            "spec": {"podSelector": {}},
        }))
        .unwrap();
        let policy = Api::<NetworkPolicy>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &policy)
            .await
            .expect("create a policy");

        let events = EventWriter::new(client.clone(), "node-1");
        let warning = Warning {
            reason: "InvalidNetworkPolicy",
            action: "Compile",
            note: "spec.ingress[0].from[0].ipBlock.cidr: invalid CIDR".into(),
        };
        // Twice: each post is an Event of its own, none refused as taken.
        for _ in 0..2 {
            events
                .warn(&policy.object_ref(&()), &warning)
                .await
                .expect("the real API server accepts the event");
        }

        let core: Api<CoreEvent> = Api::namespaced(client, "default");
        let shown = core
            .list(&ListParams::default().fields("involvedObject.name=deny-all"))
            .await
            .expect("list events")
            .items;
        assert_eq!(shown.len(), 2, "{shown:#?}");
        for event in shown {
            assert_eq!(event.type_.as_deref(), Some("Warning"));
            assert_eq!(event.reason.as_deref(), Some("InvalidNetworkPolicy"));
            assert_eq!(event.message, Some(warning.note.clone()));
            assert_eq!(event.reporting_component.as_deref(), Some("nftpol"));
            assert_eq!(event.reporting_instance.as_deref(), Some("node-1"));
            assert_eq!(event.involved_object.kind.as_deref(), Some("NetworkPolicy"));
        }
    });
}
