//! A Secret that holds a CA's state (its roots, their keys and the rotation state), read with
//! its resourceVersion and replaced only if it still has it: the API server's optimistic
//! concurrency is what stops two replicas from making two roots or skipping a phase. What the
//! keys mean is the CA's business; this is the API side alone.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::StreamExt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::call::{CallError, bounded, found};
use crate::connection::{Connection, WATCH_SECONDS};

/// The Secret's contents and the version they were read at.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Versioned {
    /// The resourceVersion to replace it at.
    pub resource_version: String,
    /// The Secret's `data`, decoded.
    pub data: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Versioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The values are private keys.
        f.debug_struct("Versioned")
            .field("resource_version", &self.resource_version)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One named Secret in one namespace.
#[derive(Clone)]
pub struct StateSecret {
    api: Api<Secret>,
    namespace: String,
    name: String,
    type_: String,
    labels: BTreeMap<String, String>,
}

impl StateSecret {
    /// The Secret `name` in `namespace`.
    pub fn new(connection: &Connection, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(connection.client.clone(), namespace),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            type_: "Opaque".into(),
            labels: [("app.kubernetes.io/name".to_owned(), "zident".to_owned())].into(),
        }
    }

    /// The same Secret, written with type `type_` (e.g. `kubernetes.io/tls`) and the label
    /// `label` beside zident's own.
    pub fn typed(mut self, type_: &str, label: (&str, &str)) -> Self {
        self.type_ = type_.to_owned();
        self.labels.insert(label.0.to_owned(), label.1.to_owned());
        self
    }

    /// `namespace/name`, for messages.
    pub fn describe(&self) -> String {
        format!("Secret {}/{}", self.namespace, self.name)
    }

    /// The Secret as stored, or `None` when it does not exist.
    pub async fn read(&self) -> Result<Option<Versioned>, CallError> {
        let secret = found(bounded(self.api.get(&self.name)).await)?;
        Ok(secret.map(|s| Versioned {
            resource_version: s.metadata.resource_version.unwrap_or_default(),
            data: s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect(),
        }))
    }

    /// Creates it holding `data`; [`CallError::Conflict`] when it exists already (another
    /// replica made it first).
    pub async fn create(&self, data: &BTreeMap<String, Vec<u8>>) -> Result<(), CallError> {
        let secret = self.object(data, None);
        bounded(self.api.create(&PostParams::default(), &secret))
            .await
            .map(drop)
    }

    /// Replaces its data with `data` if it is still at `resource_version`;
    /// [`CallError::Conflict`] when someone changed it since.
    pub async fn replace(
        &self,
        resource_version: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), CallError> {
        self.overwrite(Some(resource_version), data).await
    }

    /// Replaces its data with `data` whatever it holds now (for a Secret only zident writes);
    /// [`CallError::NotFound`] when it does not exist.
    pub async fn replace_any(&self, data: &BTreeMap<String, Vec<u8>>) -> Result<(), CallError> {
        self.overwrite(None, data).await
    }

    /// Wakes `notify` on every change of the Secret (and when the watch starts or starts
    /// again), for as long as the returned task runs. The watch names this one Secret
    /// (`metadata.name`), so RBAC can grant it by name; a broken watch is started again with
    /// backoff, and the caller's own reads cover the gap.
    pub fn watch_changes(&self, notify: Arc<Notify>) -> JoinHandle<()> {
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={}", self.name))
            .timeout(WATCH_SECONDS);
        let stream = watcher(self.api.clone(), config).default_backoff();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Ok(
                    watcher::Event::Apply(_) | watcher::Event::Delete(_) | watcher::Event::InitDone,
                ) = event
                {
                    notify.notify_one();
                }
            }
        })
    }

    /// Deletes it; a Secret already gone is not an error.
    pub async fn delete(&self) -> Result<(), CallError> {
        match bounded(self.api.delete(&self.name, &Default::default())).await {
            Ok(_) | Err(CallError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn overwrite(
        &self,
        resource_version: Option<&str>,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), CallError> {
        let secret = self.object(data, resource_version);
        bounded(
            self.api
                .replace(&self.name, &PostParams::default(), &secret),
        )
        .await
        .map(drop)
    }

    fn object(&self, data: &BTreeMap<String, Vec<u8>>, resource_version: Option<&str>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(self.labels.clone()),
                resource_version: resource_version.map(str::to_owned),
                ..Default::default()
            },
            type_: Some(self.type_.clone()),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                    .collect(),
            ),
            ..Default::default()
        }
    }
}
