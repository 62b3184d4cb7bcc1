//! How the roots Secret holds a CA's state: `rotation.json` (the rotation state, the commit
//! point), and per generation `root-<g>.pem` (the root certificate), `root-<g>.key` (its key)
//! and `jwt-<g>.key` (its JWT-SVID signing key). A retired generation keeps its certificate
//! and loses both keys. Everything is in one object, so one write with one resourceVersion
//! commits a whole step: a new generation and the state that names it land together.

use std::collections::BTreeMap;

use zeroize::Zeroizing;

use crate::roots::generation::{Generation, NewGeneration, StoredGeneration};
use crate::roots::rotation::{Change, RotationState};

/// The key of the rotation state.
pub(crate) const STATE_KEY: &str = "rotation.json";

fn cert_key(g: Generation) -> String {
    format!("root-{g}.pem")
}
fn root_key_key(g: Generation) -> String {
    format!("root-{g}.key")
}
fn jwt_key_key(g: Generation) -> String {
    format!("jwt-{g}.key")
}

/// Why the Secret's contents cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// `rotation.json` is not a rotation state.
    #[error(
        "its {STATE_KEY} is not a rotation state ({0}); restore it from a backup, or delete the Secret to start with a new root"
    )]
    State(serde_json::Error),
    /// A generation the state names has no certificate.
    #[error("it holds no certificate for root generation {0} (key {key}), which its {STATE_KEY} names", key = cert_key(*.0))]
    Missing(Generation),
}

/// The rotation state, `None` when the Secret has none.
pub(crate) fn state(
    data: &BTreeMap<String, Vec<u8>>,
) -> Result<Option<RotationState>, FormatError> {
    data.get(STATE_KEY)
        .map(|json| serde_json::from_slice(json).map_err(FormatError::State))
        .transpose()
}

/// The material of generations `which`.
pub(crate) fn generations(
    data: &BTreeMap<String, Vec<u8>>,
    which: &[Generation],
) -> Result<Vec<StoredGeneration>, FormatError> {
    which
        .iter()
        .map(|&g| {
            let cert = data.get(&cert_key(g)).ok_or(FormatError::Missing(g))?;
            let key = |k: String| data.get(&k).map(|v| Zeroizing::new(v.clone()));
            Ok(StoredGeneration {
                generation: g,
                cert_pem: String::from_utf8_lossy(cert).into_owned(),
                key_pem: key(root_key_key(g)),
                jwt_key_pem: key(jwt_key_key(g)),
            })
        })
        .collect()
}

/// Whether the Secret holds generation `g`'s certificate.
pub(crate) fn has_generation(data: &BTreeMap<String, Vec<u8>>, g: Generation) -> bool {
    data.contains_key(&cert_key(g))
}

/// The first contents: generation `first` and the state that names it.
pub(crate) fn initial(
    first: &NewGeneration,
    state: &RotationState,
) -> Result<BTreeMap<String, Vec<u8>>, serde_json::Error> {
    let mut data = BTreeMap::new();
    put_generation(&mut data, first);
    data.insert(STATE_KEY.to_owned(), serde_json::to_vec_pretty(state)?);
    Ok(data)
}

/// `data` after `change`: the generation it made added, the keys of the one it retired
/// dropped, and its state.
pub(crate) fn apply(
    data: &mut BTreeMap<String, Vec<u8>>,
    change: &Change,
) -> Result<(), serde_json::Error> {
    if let Some(made) = &change.made {
        put_generation(data, made);
    }
    if let Some(g) = change.retired {
        data.remove(&root_key_key(g));
        data.remove(&jwt_key_key(g));
    }
    data.insert(
        STATE_KEY.to_owned(),
        serde_json::to_vec_pretty(&change.state)?,
    );
    Ok(())
}

fn put_generation(data: &mut BTreeMap<String, Vec<u8>>, g: &NewGeneration) {
    data.insert(cert_key(g.generation), g.cert_pem.clone().into_bytes());
    data.insert(root_key_key(g.generation), g.key_pem.to_vec());
    data.insert(jwt_key_key(g.generation), g.jwt_key_pem.to_vec());
}

/// Gives generation `g` a JWT-SVID key where it has a root key but none (a state from before
/// JWT-SVIDs, or one written by hand); says whether it did.
pub(crate) fn ensure_jwt_key(
    data: &mut BTreeMap<String, Vec<u8>>,
    g: Generation,
) -> Result<bool, crate::roots::generation::GenerationError> {
    if data.contains_key(&root_key_key(g)) && !data.contains_key(&jwt_key_key(g)) {
        data.insert(
            jwt_key_key(g),
            crate::roots::generation::jwt_key_pem()?.to_vec(),
        );
        return Ok(true);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roots::rotation::{Phase, StepRequest, plan};
    use std::time::{Duration, SystemTime};

    #[test]
    fn a_step_lands_whole_and_a_retired_root_loses_its_keys() {
        let td = zident_identity::TrustDomain::new("td.test").unwrap();
        let now = SystemTime::now();
        let first = NewGeneration::make(&td, 1, now, Duration::from_secs(3600)).unwrap();
        let s0 = RotationState::initial(&td);
        let mut data = initial(&first, &s0).unwrap();
        assert_eq!(state(&data).unwrap().as_ref(), Some(&s0));
        let g1 = generations(&data, &[1]).unwrap();
        assert!(g1[0].key_pem.is_some() && g1[0].jwt_key_pem.is_some());

        let step = |phase, state: &RotationState| {
            plan(
                state,
                &Default::default(),
                &StepRequest {
                    phase,
                    now,
                    force: true,
                    root_lifetime: Duration::from_secs(3600),
                    timing: None,
                },
            )
            .unwrap()
        };
        let prepare = step(Phase::Prepare, &s0);
        apply(&mut data, &prepare).unwrap();
        assert_eq!(state(&data).unwrap().unwrap().prepared, Some(2));
        assert_eq!(generations(&data, &[1, 2]).unwrap().len(), 2);
        let activate = step(Phase::Activate, &prepare.state);
        apply(&mut data, &activate).unwrap();
        let retire = step(Phase::Retire, &activate.state);
        assert_eq!(retire.retired, Some(1));
        apply(&mut data, &retire).unwrap();
        let g1 = &generations(&data, &[1]).unwrap()[0];
        assert!(g1.key_pem.is_none() && g1.jwt_key_pem.is_none(), "{g1:?}");
        assert!(!g1.cert_pem.is_empty(), "the certificate stays");

        data.remove(&cert_key(2));
        assert!(matches!(
            generations(&data, &[2]),
            Err(FormatError::Missing(2))
        ));
        data.insert(STATE_KEY.into(), b"{".to_vec());
        let e = state(&data).unwrap_err().to_string();
        assert!(
            e.contains("rotation.json") && e.contains("delete the Secret"),
            "{e}"
        );
    }
}
