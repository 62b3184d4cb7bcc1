//! The database schema, as numbered migrations. Each runs once, in order, in its own
//! transaction with its version recorded; a replica starting beside another waits on an
//! advisory lock, then finds the work done. Nothing here ever edits a migration that shipped:
//! a change is a new one.

use tokio_postgres::Client;

use super::StoreError;

/// Advisory lock keys (one namespace: the first word spells "zident").
pub(crate) const LOCK_MIGRATE: i64 = 0x7a69_6465_6e74_0001;
/// Taken while the first root and the first mesh version are made.
pub(crate) const LOCK_BOOTSTRAP: i64 = 0x7a69_6465_6e74_0002;
/// Held, on its own session, by the replica that takes rotation steps.
pub(crate) const LOCK_LEADER: i64 = 0x7a69_6465_6e74_0003;

/// The migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: roots, rotation state, what was issued, mesh versions, replicas.
    r#"
    CREATE TABLE zident_roots (
        generation  integer PRIMARY KEY,
        cert_pem    text NOT NULL,
        -- AES-256-GCM under the key-encryption key; NULL once the root is retired.
        key_sealed  bytea,
        created_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE zident_rotation (
        id          integer PRIMARY KEY CHECK (id = 1),
        -- The rotation state (the same JSON as rotation.json), history included.
        state       jsonb NOT NULL,
        -- Increases with every step; replicas compare it with what they hold.
        version     bigint NOT NULL,
        updated_at  timestamptz NOT NULL DEFAULT now(),
        updated_by  text NOT NULL
    );
    CREATE TABLE zident_issued (
        identity    text PRIMARY KEY,
        at          bigint NOT NULL,
        not_before  bigint NOT NULL,
        not_after   bigint NOT NULL
    );
    CREATE TABLE zident_mesh (
        version     bigint PRIMARY KEY,
        yaml        text NOT NULL,
        sha256      text NOT NULL,
        applied_by  text NOT NULL,
        applied_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE zident_replicas (
        name              text PRIMARY KEY,
        listen            text NOT NULL,
        leader            boolean NOT NULL,
        mesh_version      bigint NOT NULL,
        rotation_version  bigint NOT NULL,
        last_seen         timestamptz NOT NULL
    );
    "#,
    // 2: a JWT-SVID signing key per root generation, sealed like the root key; NULL for a
    // generation made before JWT-SVIDs (bootstrap fills the active and prepared ones) and once
    // the generation is retired.
    r#"
    ALTER TABLE zident_roots ADD COLUMN jwt_key_sealed bytea;
    "#,
    // 3: revocation: every valid workload certificate any replica issued (so `zident ca revoke`
    // finds an identity's or a node's), and the revocation list every replica follows.
    r#"
    CREATE TABLE zident_certificates (
        serial      text PRIMARY KEY,
        identity    text NOT NULL,
        node        text,
        issuer      text NOT NULL,
        at          bigint NOT NULL,
        not_before  bigint NOT NULL,
        not_after   bigint NOT NULL
    );
    CREATE INDEX zident_certificates_identity ON zident_certificates (identity);
    CREATE INDEX zident_certificates_node ON zident_certificates (node);
    CREATE INDEX zident_certificates_not_after ON zident_certificates (not_after);
    CREATE TABLE zident_revocations (
        id          integer PRIMARY KEY CHECK (id = 1),
        -- The list (the same JSON as revocations.json).
        list        jsonb NOT NULL,
        -- Increases with every change; replicas compare it with what they hold.
        version     bigint NOT NULL,
        updated_at  timestamptz NOT NULL DEFAULT now()
    );
    "#,
];

/// The version this build's schema is at.
pub(crate) const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the schema to [`VERSION`]; refuses a database a newer zident migrated.
pub(crate) async fn migrate(client: &mut Client) -> Result<i64, StoreError> {
    let tx = client.transaction().await?;
    // Everything below happens under one lock, in one transaction (DDL is transactional in
    // PostgreSQL): two replicas starting at the same instant migrate once.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_MIGRATE])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS zident_schema (
            version     bigint PRIMARY KEY,
            applied_at  timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let current: i64 = tx
        .query_one("SELECT COALESCE(MAX(version), 0) FROM zident_schema", &[])
        .await?
        .get(0);
    if current > VERSION {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO zident_schema (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tracing::info!(target: "zident::ca", version, "database schema migrated");
    }
    tx.commit().await?;
    Ok(VERSION)
}
