//! Every read and write of the shared state. A rotation step, a mesh version and the first
//! root are each one transaction; a replica's working copy in its data dir is written from
//! what committed (`files.rs`), never the other way round. The roots are a
//! [`RootStore`] ([`PgRoots`]): rotation steps follow the same rules as on a data dir.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use tokio_postgres::{Client, NoTls};
use zident_identity::TrustDomain;

use super::StoreError;
use super::kek::{Kek, KeyKind};
use super::schema::{LOCK_BOOTSTRAP, migrate};
use crate::revocation::list::Revocations;
use crate::roots::generation::{Generation, NewGeneration, StoredGeneration, jwt_key_pem};
use crate::roots::ledger::{Certificate, Issuance, IssuedCertificate};
use crate::roots::rotation::{self, Change, Phase, RotationError, RotationState, StepRequest};
use crate::roots::store::{RootSnapshot, RootStore, take_step};

/// The channel replicas are told of changes on.
pub(crate) const CHANNEL: &str = "zident_changes";
/// A statement that takes longer than this counts as a lost database.
pub(crate) const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A rotation step to take, and by whom.
#[derive(Debug, Clone)]
pub struct Step {
    /// prepare, activate or retire.
    pub phase: Phase,
    /// The time it is taken at.
    pub now: SystemTime,
    /// Take it before it is safe.
    pub force: bool,
    /// The lifetime of a root `prepare` makes.
    pub root_lifetime: Duration,
    /// The rules to record in the state (a replica's own); `None` keeps the stored ones.
    pub timing: Option<rotation::Timing>,
    /// Who takes it, for the state's `updated_by`.
    pub by: String,
}

/// A root generation as stored.
#[derive(Debug, Clone)]
pub struct StoredRoot {
    /// The generation.
    pub generation: u32,
    /// Its certificate, PEM.
    pub cert_pem: String,
    /// Its key, sealed; `None` once retired.
    pub key_sealed: Option<Vec<u8>>,
    /// Its JWT-SVID key, sealed; `None` once retired (or made before JWT-SVIDs).
    pub jwt_key_sealed: Option<Vec<u8>>,
}

/// One stored version of the mesh.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MeshVersionRow {
    /// Its number, from 1.
    pub version: i64,
    /// SHA-256 of the YAML, hex.
    pub sha256: String,
    /// Who applied it.
    pub applied_by: String,
    /// When (RFC 3339).
    pub applied_at: String,
    /// The file, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yaml: Option<String>,
}

/// A replica as it last reported itself.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReplicaRow {
    /// Its name.
    pub name: String,
    /// Where it serves.
    pub listen: String,
    /// Whether it held the rotation lock.
    pub leader: bool,
    /// The mesh version it serves.
    pub mesh_version: i64,
    /// The rotation version it serves.
    pub rotation_version: i64,
    /// Seconds since it last reported.
    pub seconds_ago: f64,
}

/// The connection's I/O half, plain or over TLS.
enum Connection {
    Plain(
        Box<tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>>,
    ),
    Tls(
        Box<
            tokio_postgres::Connection<
                tokio_postgres::Socket,
                super::tls::RustlsStream<tokio_postgres::Socket>,
            >,
        >,
    ),
}

impl Connection {
    fn poll_message(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>> {
        match self {
            Connection::Plain(c) => c.poll_message(cx),
            Connection::Tls(c) => c.poll_message(cx),
        }
    }
}

/// A connection to the shared state.
pub struct Store {
    client: Client,
    /// Notifications on [`CHANNEL`], and `None` once the connection is gone.
    pub notifications: tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
}

impl Store {
    /// Connects to `url` and brings the schema up to date: what a replica does at start and
    /// on every reconnect, and what the command line does before it reads or writes.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut store = Self::session(url).await?;
        migrate(&mut store.client).await?;
        Ok(store)
    }

    /// Connects to `url` without touching the schema (a second session of a replica that
    /// migrated on its first, such as the one that waits for the leader lock).
    pub async fn session(url: &str) -> Result<Self, StoreError> {
        let (rest, root) = super::tls::take_root_cert(url);
        let mut config: tokio_postgres::Config =
            rest.parse()
                .map_err(|e: tokio_postgres::Error| StoreError::BadUrl {
                    url: redact(url),
                    message: e.to_string(),
                })?;
        config.connect_timeout(STATEMENT_TIMEOUT);
        config.application_name("zident-ca");
        // A session whose server vanished without a word is found out, even while it waits.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        let unreachable = |e: String| StoreError::Unreachable(format!("{}: {e}", redact(url)));
        let timeout = || {
            StoreError::Unreachable(format!(
                "no answer from {} within {STATEMENT_TIMEOUT:?}",
                redact(url)
            ))
        };
        use tokio_postgres::config::SslMode;
        let (client, connection) = match (config.get_ssl_mode(), root) {
            (SslMode::Disable, _) => {
                let (c, conn) = tokio::time::timeout(STATEMENT_TIMEOUT, config.connect(NoTls))
                    .await
                    .map_err(|_| timeout())?
                    .map_err(|e| unreachable(super::error::describe(&e)))?;
                (c, Connection::Plain(Box::new(conn)))
            }
            (_, Some(root)) => {
                let tls = super::tls::RustlsConnect::new(&root)?;
                let (c, conn) = tokio::time::timeout(STATEMENT_TIMEOUT, config.connect(tls))
                    .await
                    .map_err(|_| timeout())?
                    .map_err(|e| unreachable(super::error::describe(&e)))?;
                (c, Connection::Tls(Box::new(conn)))
            }
            (SslMode::Require, None) => {
                return Err(StoreError::TlsWithoutRoot { url: redact(url) });
            }
            // `prefer` (the default) without a CA file: no TLS, as libpq would fall back to.
            (_, None) => {
                let (c, conn) = tokio::time::timeout(STATEMENT_TIMEOUT, config.connect(NoTls))
                    .await
                    .map_err(|_| timeout())?
                    .map_err(|e| unreachable(super::error::describe(&e)))?;
                (c, Connection::Plain(Box::new(conn)))
            }
        };
        let mut connection = connection;
        let (tx, notifications) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            use tokio_postgres::AsyncMessage;
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        let _ = tx.send(Some(n.payload().to_owned()));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(target: "zident::ca", "database connection ended: {e}");
                        break;
                    }
                    None => break,
                }
            }
            let _ = tx.send(None);
        });
        Ok(Self {
            client,
            notifications,
        })
    }

    /// Subscribes to change notifications.
    pub async fn listen(&self) -> Result<(), StoreError> {
        self.client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await?;
        Ok(())
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Makes the first root (generation 1) and stores the first mesh version, unless another
    /// replica did: under one lock, in one transaction, so replicas starting together on an
    /// empty database make one root.
    pub async fn bootstrap(
        &mut self,
        td: &TrustDomain,
        root_lifetime: Duration,
        timing: rotation::Timing,
        kek: &Kek,
        import: Option<(&str, &str)>,
        by: &str,
    ) -> Result<(), StoreError> {
        let tx = self.client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_BOOTSTRAP])
            .await?;
        let existing = tx
            .query_opt("SELECT state FROM zident_rotation WHERE id = 1", &[])
            .await?;
        match existing {
            Some(row) => {
                let state: serde_json::Value = row.get(0);
                let state: RotationState =
                    serde_json::from_value(state).map_err(StoreError::CorruptState)?;
                if state.trust_domain != td.as_str() {
                    return Err(StoreError::TrustDomainMismatch {
                        stored: state.trust_domain,
                        mesh: td.clone(),
                    });
                }
                // A database from before JWT-SVIDs: the generations that sign or are about to
                // get a JWT key, made once, under the bootstrap lock, for every replica.
                for g in std::iter::once(state.active).chain(state.prepared) {
                    let missing = tx
                        .query_opt(
                            "SELECT 1 FROM zident_roots WHERE generation = $1 AND key_sealed IS NOT NULL AND jwt_key_sealed IS NULL",
                            &[&(g as i32)],
                        )
                        .await?
                        .is_some();
                    if missing {
                        let pem = jwt_key_pem().map_err(RotationError::from)?;
                        let sealed = kek.seal(KeyKind::Jwt, g, &pem)?;
                        tx.execute(
                            "UPDATE zident_roots SET jwt_key_sealed = $2 WHERE generation = $1",
                            &[&(g as i32), &sealed],
                        )
                        .await?;
                        tracing::info!(target: "zident::ca", generation = g, "made a JWT-SVID signing key for this root generation");
                    }
                }
            }
            None => {
                let first = NewGeneration::make(td, 1, SystemTime::now(), root_lifetime)
                    .map_err(RotationError::from)?;
                let g = seal(&first, kek)?;
                tx.execute(
                    "INSERT INTO zident_roots (generation, cert_pem, key_sealed, jwt_key_sealed) VALUES (1, $1, $2, $3)",
                    &[&g.cert_pem, &g.key_sealed, &g.jwt_key_sealed],
                )
                .await?;
                let mut initial = RotationState::initial(td);
                initial.timing = timing;
                let state = serde_json::to_value(initial).map_err(StoreError::CorruptState)?;
                tx.execute(
                    "INSERT INTO zident_rotation (id, state, version, updated_by) VALUES (1, $1, 1, $2)",
                    &[&state, &by],
                )
                .await?;
                tracing::info!(target: "zident::ca", trust_domain = %td, "created the first root in the database");
            }
        }
        let meshes: i64 = tx
            .query_one("SELECT COUNT(*) FROM zident_mesh", &[])
            .await?
            .get(0);
        if meshes == 0
            && let Some((yaml, applied_by)) = import
        {
            insert_mesh(&tx, yaml, applied_by).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The rotation state and its version.
    pub async fn rotation(&self) -> Result<Option<(RotationState, i64)>, StoreError> {
        let Some(row) = self
            .client
            .query_opt(
                "SELECT state, version FROM zident_rotation WHERE id = 1",
                &[],
            )
            .await?
        else {
            return Ok(None);
        };
        let state: RotationState =
            serde_json::from_value(row.get(0)).map_err(StoreError::CorruptState)?;
        Ok(Some((state, row.get(1))))
    }

    /// Every root generation.
    pub async fn roots(&self) -> Result<Vec<StoredRoot>, StoreError> {
        roots_of(&self.client).await
    }

    /// The newest mesh version, with its YAML.
    pub async fn latest_mesh(&self) -> Result<Option<MeshVersionRow>, StoreError> {
        self.mesh_where("ORDER BY version DESC LIMIT 1", &[], true)
            .await
            .map(|mut v| v.pop())
    }

    /// One mesh version, with its YAML.
    pub async fn mesh_version(&self, version: i64) -> Result<Option<MeshVersionRow>, StoreError> {
        self.mesh_where("WHERE version = $1", &[&version], true)
            .await
            .map(|mut v| v.pop())
    }

    /// Every mesh version, oldest first, without the YAML.
    pub async fn mesh_history(&self) -> Result<Vec<MeshVersionRow>, StoreError> {
        self.mesh_where("ORDER BY version", &[], false).await
    }

    async fn mesh_where(
        &self,
        clause: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        with_yaml: bool,
    ) -> Result<Vec<MeshVersionRow>, StoreError> {
        let sql = format!(
            "SELECT version, sha256, applied_by, to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), yaml FROM zident_mesh {clause}"
        );
        Ok(self
            .client
            .query(&sql, params)
            .await?
            .into_iter()
            .map(|r| MeshVersionRow {
                version: r.get(0),
                sha256: r.get(1),
                applied_by: r.get(2),
                applied_at: r.get(3),
                yaml: with_yaml.then(|| r.get(4)),
            })
            .collect())
    }

    /// Stores `yaml` (already checked) as the next mesh version and tells every replica.
    pub async fn apply_mesh(&mut self, yaml: &str, applied_by: &str) -> Result<i64, StoreError> {
        let tx = self.client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_BOOTSTRAP])
            .await?;
        let version = insert_mesh(&tx, yaml, applied_by).await?;
        tx.commit().await?;
        Ok(version)
    }

    /// Records what replicas issued (the latest per identity wins).
    pub async fn record_issued(&self, batch: &HashMap<String, Issuance>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let (mut ids, mut at, mut nb, mut na) = (vec![], vec![], vec![], vec![]);
        for (id, i) in batch {
            ids.push(id.clone());
            at.push(i.at as i64);
            nb.push(i.not_before as i64);
            na.push(i.not_after as i64);
        }
        self.client
            .execute(
                "INSERT INTO zident_issued (identity, at, not_before, not_after)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
                 ON CONFLICT (identity) DO UPDATE
                   SET at = EXCLUDED.at, not_before = EXCLUDED.not_before, not_after = EXCLUDED.not_after
                   WHERE zident_issued.at <= EXCLUDED.at",
                &[&ids, &at, &nb, &na],
            )
            .await?;
        Ok(())
    }

    /// Records workload certificates a replica issued (their serials, for revocation), and
    /// forgets those that expired before `now`.
    pub async fn record_certificates(
        &self,
        batch: &[IssuedCertificate],
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let now = zident_identity::unix_seconds(now) as i64;
        self.client
            .execute(
                "DELETE FROM zident_certificates WHERE not_after <= $1",
                &[&now],
            )
            .await?;
        if batch.is_empty() {
            return Ok(());
        }
        let (mut serial, mut id, mut node, mut issuer) = (vec![], vec![], vec![], vec![]);
        let (mut at, mut nb, mut na) = (vec![], vec![], vec![]);
        for c in batch {
            serial.push(c.certificate.serial.clone());
            id.push(c.id.clone());
            node.push(c.certificate.node.clone());
            issuer.push(c.certificate.issuer.clone());
            at.push(c.issuance.at as i64);
            nb.push(c.issuance.not_before as i64);
            na.push(c.issuance.not_after as i64);
        }
        self.client
            .execute(
                "INSERT INTO zident_certificates (serial, identity, node, issuer, at, not_before, not_after)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[])
                 ON CONFLICT (serial) DO NOTHING",
                &[&serial, &id, &node, &issuer, &at, &nb, &na],
            )
            .await?;
        Ok(())
    }

    /// Every workload certificate a replica issued that is valid at `now`, oldest first.
    pub async fn certificates(
        &self,
        now: SystemTime,
    ) -> Result<Vec<IssuedCertificate>, StoreError> {
        certificates_of(&self.client, now).await
    }

    /// The revocation list and its version; `None` before the first revocation.
    pub async fn revocations(&self) -> Result<Option<(Revocations, i64)>, StoreError> {
        let Some(row) = self
            .client
            .query_opt(
                "SELECT list, version FROM zident_revocations WHERE id = 1",
                &[],
            )
            .await?
        else {
            return Ok(None);
        };
        let list: serde_json::Value = row.get(0);
        let list = serde_json::from_value(list).map_err(|e| {
            StoreError::Corrupt(format!("zident_revocations holds no revocation list: {e}"))
        })?;
        Ok(Some((list, row.get(1))))
    }

    /// Changes the revocation list with `change` (given the list and every valid certificate
    /// any replica issued) in one transaction, the row locked: two operators revoking at once
    /// both land. Notifies the replicas.
    pub async fn change_revocations<R>(
        &mut self,
        now: SystemTime,
        change: impl FnOnce(&mut Revocations, &[IssuedCertificate]) -> Result<R, String>,
    ) -> Result<R, StoreError> {
        let tx = self.client.transaction().await?;
        tx.execute(
            "INSERT INTO zident_revocations (id, list, version) VALUES (1, '{}'::jsonb, 0)
             ON CONFLICT (id) DO NOTHING",
            &[],
        )
        .await?;
        let row = tx
            .query_one(
                "SELECT list, version FROM zident_revocations WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await?;
        let list: serde_json::Value = row.get(0);
        let version: i64 = row.get(1);
        let mut list: Revocations = serde_json::from_value(list).map_err(|e| {
            StoreError::Corrupt(format!("zident_revocations holds no revocation list: {e}"))
        })?;
        let issued = certificates_of(&tx, now).await?;
        let result = change(&mut list, &issued).map_err(StoreError::Refused)?;
        let json = serde_json::to_value(&list)
            .map_err(|e| StoreError::Corrupt(format!("the revocation list: {e}")))?;
        tx.execute(
            "UPDATE zident_revocations SET list = $1, version = $2, updated_at = now() WHERE id = 1",
            &[&json, &(version + 1)],
        )
        .await?;
        tx.execute(&format!("NOTIFY {CHANNEL}, 'revocations'"), &[])
            .await?;
        tx.commit().await?;
        Ok(result)
    }

    /// What every replica issued, the latest per identity.
    pub async fn issued(&self) -> Result<HashMap<String, Issuance>, StoreError> {
        issued_of(&self.client).await
    }

    /// Takes rotation step `step` by the rules every store shares ([`rotation::plan`]): planned
    /// on the stored state and what every replica issued, committed as one transaction that
    /// fails on a conflicting change (and is then planned again). Nothing touches the disk.
    pub async fn step(&mut self, step: &Step, kek: &Kek) -> Result<RotationState, StoreError> {
        let request = StepRequest {
            phase: step.phase,
            now: step.now,
            force: step.force,
            root_lifetime: step.root_lifetime,
            timing: step.timing,
        };
        let mut roots = PgRoots {
            store: self,
            kek,
            by: &step.by,
        };
        take_step(&mut roots, &request).await.map_err(|e| match e {
            // The database's own failure, as it was.
            RotationError::Store(inner) => match inner.downcast::<StoreError>() {
                Ok(store) => *store,
                Err(other) => StoreError::Unreachable(other.to_string()),
            },
            other => StoreError::Rotation(other),
        })
    }

    /// Waits until this session holds the leader lock, an advisory lock PostgreSQL keeps for
    /// the session and hands to the next waiter the moment the session ends.
    pub async fn lead(&self) -> Result<(), StoreError> {
        self.client
            .query_one(
                "SELECT pg_advisory_lock($1)",
                &[&super::schema::LOCK_LEADER],
            )
            .await?;
        Ok(())
    }

    /// Records that replica `name` is alive and what it serves.
    pub async fn heartbeat(
        &self,
        name: &str,
        listen: &str,
        leader: bool,
        mesh_version: i64,
        rotation_version: i64,
    ) -> Result<(), StoreError> {
        self.client
            .execute(
                "INSERT INTO zident_replicas (name, listen, leader, mesh_version, rotation_version, last_seen)
                 VALUES ($1, $2, $3, $4, $5, now())
                 ON CONFLICT (name) DO UPDATE SET listen = $2, leader = $3, mesh_version = $4,
                   rotation_version = $5, last_seen = now()",
                &[&name, &listen, &leader, &mesh_version, &rotation_version],
            )
            .await?;
        Ok(())
    }

    /// Every replica that ever reported, and how long ago it last did.
    pub async fn replicas(&self) -> Result<Vec<ReplicaRow>, StoreError> {
        Ok(self
            .client
            .query(
                "SELECT name, listen, leader, mesh_version, rotation_version,
                        EXTRACT(EPOCH FROM (now() - last_seen))::float8
                 FROM zident_replicas ORDER BY name",
                &[],
            )
            .await?
            .into_iter()
            .map(|r| ReplicaRow {
                name: r.get(0),
                listen: r.get(1),
                leader: r.get(2),
                mesh_version: r.get(3),
                rotation_version: r.get(4),
                seconds_ago: r.get(5),
            })
            .collect())
    }
}

/// The database as a [`RootStore`]: the rotation state row with its version, the root rows
/// with their keys sealed under the KEK, and what every replica issued.
pub struct PgRoots<'a> {
    /// The session.
    pub store: &'a mut Store,
    /// Seals the keys of a generation `prepare` makes.
    pub kek: &'a Kek,
    /// Who takes the steps, for the state's `updated_by`.
    pub by: &'a str,
}

impl RootStore for PgRoots<'_> {
    async fn generations(
        &mut self,
        which: &[Generation],
    ) -> Result<Vec<StoredGeneration>, RotationError> {
        let rows = self.store.roots().await.map_err(store_error)?;
        open_generations(&rows, self.kek, which).map_err(store_error)
    }

    async fn state(&mut self) -> Result<Option<RotationState>, RotationError> {
        Ok(self
            .store
            .rotation()
            .await
            .map_err(store_error)?
            .map(|(s, _)| s))
    }

    async fn snapshot(&mut self) -> Result<Option<RootSnapshot>, RotationError> {
        let Some((state, _)) = self.store.rotation().await.map_err(store_error)? else {
            return Ok(None);
        };
        let issued = self.store.issued().await.map_err(store_error)?;
        Ok(Some(RootSnapshot { state, issued }))
    }

    async fn commit(&mut self, base: &RotationState, change: &Change) -> Result<(), RotationError> {
        let sealed = change
            .made
            .as_ref()
            .map(|g| seal(g, self.kek).map(|s| (g.generation, s)))
            .transpose()
            .map_err(store_error)?;
        let tx = self.store.client.transaction().await.map_err(db_error)?;
        let row = tx
            .query_opt(
                "SELECT state FROM zident_rotation WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
            .map_err(db_error)?
            .ok_or(RotationError::Conflict)?;
        let stored: RotationState = serde_json::from_value(row.get(0))
            .map_err(|e| store_error(StoreError::CorruptState(e)))?;
        if &stored != base {
            return Err(RotationError::Conflict);
        }
        if let Some((g, sealed)) = sealed {
            tx.execute(
                "INSERT INTO zident_roots (generation, cert_pem, key_sealed, jwt_key_sealed) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (generation) DO UPDATE SET cert_pem = $2, key_sealed = $3, jwt_key_sealed = $4",
                &[&(g as i32), &sealed.cert_pem, &sealed.key_sealed, &sealed.jwt_key_sealed],
            )
            .await
            .map_err(db_error)?;
        }
        if let Some(g) = change.retired {
            tx.execute(
                "UPDATE zident_roots SET key_sealed = NULL, jwt_key_sealed = NULL WHERE generation = $1",
                &[&(g as i32)],
            )
            .await
            .map_err(db_error)?;
        }
        let json = serde_json::to_value(&change.state)
            .map_err(|e| store_error(StoreError::CorruptState(e)))?;
        tx.execute(
            "UPDATE zident_rotation SET state = $1, version = version + 1, updated_at = now(), updated_by = $2 WHERE id = 1",
            &[&json, &self.by],
        )
        .await
        .map_err(db_error)?;
        tx.execute(&format!("NOTIFY {CHANNEL}, 'rotation'"), &[])
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(())
    }
}

/// The generations `which` of `rows`, their keys opened with `kek`.
pub(crate) fn open_generations(
    rows: &[StoredRoot],
    kek: &Kek,
    which: &[Generation],
) -> Result<Vec<StoredGeneration>, StoreError> {
    let open = |kind, g, sealed: &Option<Vec<u8>>| {
        sealed.as_ref().map(|s| kek.open(kind, g, s)).transpose()
    };
    rows.iter()
        .filter(|r| which.contains(&r.generation))
        .map(|r| {
            Ok(StoredGeneration {
                generation: r.generation,
                cert_pem: r.cert_pem.clone(),
                key_pem: open(KeyKind::Root, r.generation, &r.key_sealed)?,
                jwt_key_pem: open(KeyKind::Jwt, r.generation, &r.jwt_key_sealed)?,
            })
        })
        .collect()
}

fn store_error(e: StoreError) -> RotationError {
    RotationError::Store(Box::new(e))
}

fn db_error(e: tokio_postgres::Error) -> RotationError {
    store_error(StoreError::Db(e))
}

/// A generation's material as stored: the certificate, and both keys sealed under the KEK.
pub(crate) struct SealedGeneration {
    pub cert_pem: String,
    pub key_sealed: Vec<u8>,
    pub jwt_key_sealed: Vec<u8>,
}

/// Seals `g`'s keys for the database.
pub(crate) fn seal(g: &NewGeneration, kek: &Kek) -> Result<SealedGeneration, StoreError> {
    Ok(SealedGeneration {
        cert_pem: g.cert_pem.clone(),
        key_sealed: kek.seal(KeyKind::Root, g.generation, &g.key_pem)?,
        jwt_key_sealed: kek.seal(KeyKind::Jwt, g.generation, &g.jwt_key_pem)?,
    })
}

async fn insert_mesh(
    tx: &tokio_postgres::Transaction<'_>,
    yaml: &str,
    applied_by: &str,
) -> Result<i64, StoreError> {
    let version: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) + 1 FROM zident_mesh", &[])
        .await?
        .get(0);
    let sha = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, yaml.as_bytes()).as_ref());
    tx.execute(
        "INSERT INTO zident_mesh (version, yaml, sha256, applied_by) VALUES ($1, $2, $3, $4)",
        &[&version, &yaml, &sha, &applied_by],
    )
    .await?;
    tx.execute(&format!("NOTIFY {CHANNEL}, 'mesh'"), &[])
        .await?;
    Ok(version)
}

async fn roots_of(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<StoredRoot>, StoreError> {
    Ok(client
        .query(
            "SELECT generation, cert_pem, key_sealed, jwt_key_sealed FROM zident_roots ORDER BY generation",
            &[],
        )
        .await?
        .into_iter()
        .map(|r| StoredRoot {
            generation: r.get::<_, i32>(0) as u32,
            cert_pem: r.get(1),
            key_sealed: r.get(2),
            jwt_key_sealed: r.get(3),
        })
        .collect())
}

async fn certificates_of(
    client: &impl tokio_postgres::GenericClient,
    now: SystemTime,
) -> Result<Vec<IssuedCertificate>, StoreError> {
    let unix = zident_identity::unix_seconds(now) as i64;
    Ok(client
        .query(
            "SELECT serial, identity, node, issuer, at, not_before, not_after
             FROM zident_certificates WHERE not_after > $1 ORDER BY at",
            &[&unix],
        )
        .await?
        .iter()
        .map(|r| IssuedCertificate {
            id: r.get(1),
            issuance: Issuance {
                at: r.get::<_, i64>(4) as u64,
                not_before: r.get::<_, i64>(5) as u64,
                not_after: r.get::<_, i64>(6) as u64,
            },
            certificate: Certificate {
                serial: r.get(0),
                node: r.get(2),
                issuer: r.get(3),
            },
        })
        .collect())
}

async fn issued_of(
    client: &impl tokio_postgres::GenericClient,
) -> Result<HashMap<String, Issuance>, StoreError> {
    Ok(client
        .query(
            "SELECT identity, at, not_before, not_after FROM zident_issued",
            &[],
        )
        .await?
        .into_iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                Issuance {
                    at: r.get::<_, i64>(1) as u64,
                    not_before: r.get::<_, i64>(2) as u64,
                    not_after: r.get::<_, i64>(3) as u64,
                },
            )
        })
        .collect())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The URL with any password replaced, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
