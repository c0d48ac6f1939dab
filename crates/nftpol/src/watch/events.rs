//! Warning Events about objects (`events.k8s.io/v1`), written by nftpol's
//! own client: one `create` per event, reported by controller `nftpol` and
//! instance NODE, as `kubectl get events` shows them.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

/// Writes Events as one controller instance.
#[derive(Clone)]
pub struct EventWriter {
    client: kube::Client,
    /// `reportingInstance`: the node's name.
    instance: String,
}

/// What one Warning says.
pub struct Warning {
    /// E.g. `InvalidNetworkPolicy`.
    pub reason: &'static str,
    /// E.g. `Compile`.
    pub action: &'static str,
    pub note: String,
}

impl EventWriter {
    pub fn new(client: kube::Client, instance: impl Into<String>) -> Self {
        Self {
            client,
            instance: instance.into(),
        }
    }

    /// Posts `warning` about the object `regarding`, in its namespace.
    pub async fn warn(
        &self,
        regarding: &ObjectReference,
        warning: &Warning,
    ) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                // Unique per post, as kubectl and client-go name them.
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or("object"),
                    now.as_nanosecond()
                )),
                namespace: Some(namespace.to_string()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some("Warning".into()),
            reason: Some(warning.reason.into()),
            action: Some(warning.action.into()),
            note: Some(warning.note.clone()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some("nftpol".into()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        Api::<Event>::namespaced(self.client.clone(), namespace)
            .create(&PostParams::default(), &event)
            .await
            .map(drop)
    }
}
