//! Applying a change made outside the process while it runs: an edited mesh file, new
//! plugged-in CA files, a root rotation step taken by `zident ca rotate` or the schedule. Each
//! is checked whole and applied whole, or refused with the reason while the CA keeps what it
//! has.

use std::path::Path;

use x509_parser::prelude::{FromDer, X509Certificate};
use zident_identity::TrustDomain;
use zident_mesh::MeshFile;

use crate::config::CaConfig;
use crate::kubernetes::{FileBase, FileSink};
use crate::node_authorizer::NodeAuthorizer;
use crate::roots::authority::{Authority, AuthorityError};
use crate::roots::plugged;
use crate::server::ServingCert;
use crate::state::CaState;

/// The authority the configuration describes: self-signed roots in the data dir (with their
/// rotation), or the plugged-in files of `ROOT_CA_DIR`.
pub(crate) fn load_authority(
    config: &CaConfig,
    td: &TrustDomain,
) -> Result<Authority, AuthorityError> {
    match &config.root_ca_dir {
        None => Authority::self_signed(&config.data_dir, td, config.rotation.root_lifetime),
        // Published by the caller once the change is accepted.
        Some(dir) => Authority::plugged_in(dir, td)?.with_data_dir_jwt_key(&config.data_dir),
    }
}

/// Applies an edited mesh file, or keeps the last good one.
pub(crate) fn reload_mesh(state: &CaState, path: &Path) {
    let current_td = state.authorizer().trust_domain().clone();
    let result = MeshFile::load(path).and_then(|mesh| {
        mesh.keeps_trust_domain(&current_td, &zident_mesh::MeshOrigin::file(path), "the CA")?;
        NodeAuthorizer::from_mesh(&mesh, path).map(|r| (r, mesh))
    });
    match result {
        Ok((registry, mesh)) => {
            tracing::info!(
                target: "zident::ca",
                nodes = mesh.nodes.len(),
                identities = mesh.identities.len(),
                workloads = mesh.workloads.len(),
                "mesh file reloaded"
            );
            state.set_mesh(mesh, registry);
            state.metrics.reload("mesh", true);
        }
        Err(e) => {
            state.metrics.reload("mesh", false);
            tracing::error!(target: "zident::ca", "mesh file change rejected, keeping the last good configuration: {e}");
        }
    }
}

/// Takes an edited mesh file to combine with the cluster's part (`zident ca --kubernetes`), or
/// keeps the last good one: the same checks as [`reload_mesh`], then the cluster source
/// rebuilds and applies the whole.
pub(crate) fn reload_mesh_beside_cluster(state: &CaState, path: &Path, sink: &FileSink) {
    let current_td = state.authorizer().trust_domain().clone();
    let result = MeshFile::load(path).and_then(|mesh| {
        mesh.keeps_trust_domain(&current_td, &zident_mesh::MeshOrigin::file(path), "the CA")?;
        let tokens = mesh.resolve_tokens(path)?;
        Ok(FileBase { mesh, tokens })
    });
    match result {
        Ok(base) => {
            tracing::info!(target: "zident::ca", "mesh file reloaded; combining it with the cluster's mesh");
            sink.send_replace(std::sync::Arc::new(base));
        }
        Err(e) => {
            state.metrics.reload("mesh", false);
            tracing::error!(target: "zident::ca", "mesh file change rejected, keeping the last good configuration: {e}");
        }
    }
}

/// Applies changed plugged-in CA files if no handshake would break, or records why not.
pub(crate) fn reload_plugged_in(
    state: &CaState,
    config: &CaConfig,
    serving: &ServingCert,
    plugged: &std::sync::Mutex<plugged::PluggedState>,
) {
    let td = state.authorizer().trust_domain().clone();
    let timing = config.rotation_timing();
    let now = std::time::SystemTime::now();
    let mut known = plugged.lock().unwrap_or_else(|e| e.into_inner());
    let current = state.authority();
    let checked = load_authority(config, &td)
        .map_err(|e| e.to_string())
        .and_then(|next| {
            known
                .check(&current, &next, &timing, &state.ledger.snapshot(), now)
                .map(|()| next)
                .map_err(|e| format!("the change would break handshakes: {e}"))
        });
    match checked {
        Ok(mut authority) => {
            if let Err(e) = serving.renew(&authority) {
                tracing::error!(target: "zident::ca", "new CA keys cannot sign a serving certificate, keeping the old keys: {e}");
                state.metrics.reload("root_ca_dir", false);
                record_refusal(
                    &mut known,
                    config,
                    &format!("the new keys cannot sign the CA's serving certificate: {e}"),
                    now,
                );
                return;
            }
            let next_known = match known.applied(&config.data_dir, &authority, &timing, now) {
                Ok(k) => k,
                Err(e) => {
                    tracing::error!(target: "zident::ca", "cannot record the plugged-in roots, keeping the current keys: {e}");
                    state.metrics.reload("root_ca_dir", false);
                    return;
                }
            };
            authority.set_bundle_sequence(next_known.sequence);
            if let Err(e) = authority.publish_root_cert(&config.data_dir) {
                tracing::error!(target: "zident::ca", "cannot publish root-cert.pem: {e}");
            }
            let roots = authority.bundle().roots().len();
            state.set_authority(authority);
            *known = next_known;
            state.metrics.reload("root_ca_dir", true);
            tracing::info!(target: "zident::ca", roots, sequence = known.sequence, "plugged-in CA files reloaded");
        }
        Err(e) => {
            state.metrics.reload("root_ca_dir", false);
            tracing::error!(target: "zident::ca", "plugged-in CA files rejected, keeping the current keys: {e}");
            record_refusal(&mut known, config, &e, now);
        }
    }
}

/// Keeps why a change of the plugged-in files was refused in the state file, for `zident ca
/// status`.
fn record_refusal(
    known: &mut plugged::PluggedState,
    config: &CaConfig,
    reason: &str,
    now: std::time::SystemTime,
) {
    match known.refused(&config.data_dir, reason, now) {
        Ok(k) => *known = k,
        Err(e) => {
            tracing::error!(target: "zident::ca", "cannot record the refusal in the plugged-in state: {e}")
        }
    }
}

/// Loads the authority the rotation state in the data dir now describes, and puts it in force
/// if it differs from the one in use.
pub(crate) fn reload_rotation(state: &CaState, config: &CaConfig, serving: &ServingCert) {
    let td = state.authorizer().trust_domain().clone();
    match Authority::self_signed(&config.data_dir, &td, config.rotation.root_lifetime) {
        Ok(authority) => apply_rotated(state, serving, authority),
        Err(e) => {
            state.metrics.reload("rotation", false);
            tracing::error!(target: "zident::ca", "root rotation state rejected, keeping the current keys: {e}");
        }
    }
}

/// Puts a rotated `authority` in force (from any root store), unless it is the one in use:
/// the serving certificate is renewed under it first, or nothing changes.
pub(crate) fn apply_rotated(state: &CaState, serving: &ServingCert, authority: Authority) {
    let current = state.authority();
    if authority.signer() == current.signer()
        && authority.bundle().roots() == current.bundle().roots()
        && authority.bundle().sequence() == current.bundle().sequence()
    {
        return;
    }
    if let Err(e) = serving.renew(&authority) {
        tracing::error!(target: "zident::ca", "the rotated root cannot sign a serving certificate, keeping the current one: {e}");
        state.metrics.reload("rotation", false);
        return;
    }
    let signer_changed = authority.signer() != current.signer();
    let (roots, sequence) = (
        authority.bundle().roots().len(),
        authority.bundle().sequence(),
    );
    let signer_serial = zident_identity::serial_hex(
        X509Certificate::from_der(authority.signer())
            .map(|(_, c)| c.raw_serial().to_vec())
            .unwrap_or_default()
            .as_slice(),
    );
    state.set_authority(authority);
    state.metrics.reload("rotation", true);
    tracing::info!(
        target: "zident::ca",
        roots,
        sequence,
        signer = %signer_serial,
        signer_changed,
        "root rotation applied: the trust bundle and signing key are now as the rotation state says"
    );
}
