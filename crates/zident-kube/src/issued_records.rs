//! What each CA replica issued, in a ConfigMap of its own (`zident-ca-issued-<replica>`,
//! labelled so the leader finds them all): each replica writes only its own, so they never
//! conflict, and the leader reads every one before it activates a prepared root. No key is in
//! them; the text's format is the CA's business.

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use crate::call::{CallError, bounded};
use crate::connection::Connection;

/// The label every record carries, and its value.
pub const ISSUED_LABEL: (&str, &str) = ("zident.io/ca-issued", "true");
/// The key holding the text.
pub const ISSUED_KEY: &str = "issued";
/// The name's prefix; the replica's name follows.
const PREFIX: &str = "zident-ca-issued-";

/// The records in one namespace, written as replica `replica`.
#[derive(Clone)]
pub struct IssuedRecords {
    api: Api<ConfigMap>,
    namespace: String,
    own: String,
}

impl IssuedRecords {
    /// `replica`'s record in `namespace` (the name is made a valid object name).
    pub fn new(connection: &Connection, namespace: &str, replica: &str) -> Self {
        Self {
            api: Api::namespaced(connection.client.clone(), namespace),
            namespace: namespace.to_owned(),
            own: record_name(replica),
        }
    }

    /// This replica's record's name.
    pub fn own_name(&self) -> &str {
        &self.own
    }

    /// This replica's name as its record spells it (see [`replica_of`]).
    pub fn own_replica(&self) -> &str {
        replica_of(&self.own)
    }

    /// Writes this replica's record (it is the only writer, so no version is needed).
    pub async fn write(&self, text: &str) -> Result<(), CallError> {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.own.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(
                    [
                        (ISSUED_LABEL.0.to_owned(), ISSUED_LABEL.1.to_owned()),
                        ("app.kubernetes.io/name".to_owned(), "zident".to_owned()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some([(ISSUED_KEY.to_owned(), text.to_owned())].into()),
            ..Default::default()
        };
        match bounded(self.api.replace(&self.own, &PostParams::default(), &cm)).await {
            Err(CallError::NotFound(_)) => bounded(self.api.create(&PostParams::default(), &cm))
                .await
                .map(drop),
            other => other.map(drop),
        }
    }

    /// Every replica's record: its name and text.
    pub async fn read_all(&self) -> Result<Vec<(String, String)>, CallError> {
        let selector = format!("{}={}", ISSUED_LABEL.0, ISSUED_LABEL.1);
        let list = bounded(self.api.list(&ListParams::default().labels(&selector))).await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|cm| {
                let name = cm.metadata.name?;
                let text = cm.data?.remove(ISSUED_KEY).unwrap_or_default();
                Some((name, text))
            })
            .collect())
    }

    /// Deletes a record whose every certificate has expired (a replica that is gone).
    pub async fn delete(&self, name: &str) -> Result<(), CallError> {
        match bounded(self.api.delete(name, &DeleteParams::default())).await {
            Ok(_) | Err(CallError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The replica a record is of: its name without the prefix (lower-cased and made a valid
/// object name, as the record's name is).
pub fn replica_of(record: &str) -> &str {
    record.strip_prefix(PREFIX).unwrap_or(record)
}

/// `zident-ca-issued-<replica>`, lower-cased, with anything an object name may not hold
/// replaced by `-`, and cut to the 253 bytes a name may have.
fn record_name(replica: &str) -> String {
    let mut name: String = PREFIX.to_owned();
    name.extend(replica.chars().map(|c| match c.to_ascii_lowercase() {
        c @ ('a'..='z' | '0'..='9' | '-' | '.') => c,
        _ => '-',
    }));
    name.truncate(253);
    while name.ends_with(['-', '.']) {
        name.pop();
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_name_becomes_a_valid_object_name() {
        assert_eq!(
            record_name("zident-ca-7d9f"),
            "zident-ca-issued-zident-ca-7d9f"
        );
        assert_eq!(
            record_name("Host_1:127.0.0.1:15012"),
            "zident-ca-issued-host-1-127.0.0.1-15012"
        );
        assert_eq!(record_name(&"x".repeat(400)).len(), 253);
        assert_eq!(record_name("a:"), "zident-ca-issued-a");
        assert_eq!(replica_of(&record_name("Host_1")), "host-1");
    }
}
