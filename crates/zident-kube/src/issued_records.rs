//! What each CA replica issued, in ConfigMaps of its own, labelled so the others find them
//! all: each replica writes only its own, so they never conflict. Two kinds:
//! - `zident-ca-issued-<replica>`: its latest issuance per identity; the leader reads every one
//!   before it activates a prepared root;
//! - `zident-ca-serials-<replica>`: the certificates it issued that are still valid, by serial,
//!   so that a revocation reaches what a replica issued after the replica (and its data dir)
//!   is gone.
//!
//! No key is in them; the text's format is the CA's business.

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

use crate::call::{CallError, bounded};
use crate::connection::Connection;

/// Which records: their names' prefix, their label and the key holding the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordKind {
    prefix: &'static str,
    label: &'static str,
    key: &'static str,
}

/// The latest issuance per identity (for root activation).
pub const ISSUED: RecordKind = RecordKind {
    prefix: "zident-ca-issued-",
    label: "zident.io/ca-issued",
    key: "issued",
};

/// The valid certificates by serial (for revocation).
pub const SERIALS: RecordKind = RecordKind {
    prefix: "zident-ca-serials-",
    label: "zident.io/ca-serials",
    key: "certificates",
};

/// The records of one kind in one namespace, written as replica `replica`.
#[derive(Clone)]
pub struct IssuedRecords {
    api: Api<ConfigMap>,
    namespace: String,
    own: String,
    kind: RecordKind,
}

impl IssuedRecords {
    /// `replica`'s issued record in `namespace` (the name is made a valid object name).
    pub fn new(connection: &Connection, namespace: &str, replica: &str) -> Self {
        Self::of(ISSUED, connection, namespace, replica)
    }

    /// `replica`'s record of `kind` in `namespace`.
    pub fn of(kind: RecordKind, connection: &Connection, namespace: &str, replica: &str) -> Self {
        Self {
            api: Api::namespaced(connection.client.clone(), namespace),
            namespace: namespace.to_owned(),
            own: record_name(kind.prefix, replica),
            kind,
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
                        (self.kind.label.to_owned(), "true".to_owned()),
                        ("app.kubernetes.io/name".to_owned(), "zident".to_owned()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            data: Some([(self.kind.key.to_owned(), text.to_owned())].into()),
            ..Default::default()
        };
        match bounded(self.api.replace(&self.own, &PostParams::default(), &cm)).await {
            Err(CallError::NotFound(_)) => bounded(self.api.create(&PostParams::default(), &cm))
                .await
                .map(drop),
            other => other.map(drop),
        }
    }

    /// Every replica's record of this kind: its name and text.
    pub async fn read_all(&self) -> Result<Vec<(String, String)>, CallError> {
        let selector = format!("{}=true", self.kind.label);
        let list = bounded(self.api.list(&ListParams::default().labels(&selector))).await?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|cm| {
                let name = cm.metadata.name?;
                let text = cm.data?.remove(self.kind.key).unwrap_or_default();
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

/// The replica a record (of either kind) is of: its name without the prefix (lower-cased and
/// made a valid object name, as the record's name is).
pub fn replica_of(record: &str) -> &str {
    [ISSUED.prefix, SERIALS.prefix]
        .iter()
        .find_map(|p| record.strip_prefix(p))
        .unwrap_or(record)
}

/// `<prefix><replica>`, lower-cased, with anything an object name may not hold replaced by
/// `-`, and cut to the 253 bytes a name may have.
fn record_name(prefix: &str, replica: &str) -> String {
    let mut name: String = prefix.to_owned();
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
        let name = |replica: &str| record_name(ISSUED.prefix, replica);
        assert_eq!(name("zident-ca-7d9f"), "zident-ca-issued-zident-ca-7d9f");
        assert_eq!(
            name("Host_1:127.0.0.1:15012"),
            "zident-ca-issued-host-1-127.0.0.1-15012"
        );
        assert_eq!(name(&"x".repeat(400)).len(), 253);
        assert_eq!(name("a:"), "zident-ca-issued-a");
        assert_eq!(replica_of(&name("Host_1")), "host-1");
        assert_eq!(replica_of(&record_name(SERIALS.prefix, "ca-0")), "ca-0");
    }
}
