//! Which root the CA signs under, as the certificates it issues show it.
//!
//! A root rotation's activate step is not announced: the bundle already held the new root
//! since prepare. The first certificate this node receives under the new root is how it
//! learns. By default the other certificates move to the new root at their normal renewal,
//! which is safe (the old root stays trusted until retire). With
//! `--renew-on-root-change`, they renew at once, spread over a few seconds, so a node is
//! under the new root long before retire and shows it.

use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use zident_identity::fingerprint;

/// The root the newest certificate issued to this node chains to.
pub(crate) struct SigningRoot {
    tx: watch::Sender<Option<CertificateDer<'static>>>,
}

impl SigningRoot {
    pub(crate) fn new() -> Self {
        Self {
            tx: watch::Sender::new(None),
        }
    }

    /// Told of every change of the signing root.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Option<CertificateDer<'static>>> {
        self.tx.subscribe()
    }

    /// Records that a certificate just issued chains to `root`. Returns the root it replaces
    /// when the CA has moved to another root since the previous certificate.
    pub(crate) fn observe(
        &self,
        root: &CertificateDer<'static>,
    ) -> Option<CertificateDer<'static>> {
        let mut replaced = None;
        self.tx.send_if_modified(|current| {
            if current.as_ref() == Some(root) {
                return false;
            }
            replaced = current.replace(root.clone());
            true
        });
        replaced
    }
}

/// The start of a root's fingerprint, for log lines and tables.
pub(crate) fn short(root: &CertificateDer<'_>) -> String {
    let mut f = fingerprint(root);
    f.truncate(16);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_reported_once_with_the_root_it_replaces() {
        let roots = SigningRoot::new();
        let mut rx = roots.subscribe();
        let (a, b) = (
            CertificateDer::from(vec![1u8, 2, 3]),
            CertificateDer::from(vec![4u8, 5, 6]),
        );
        assert_eq!(roots.observe(&a), None, "the first root replaces nothing");
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert_eq!(roots.observe(&a), None);
        assert!(!rx.has_changed().unwrap(), "the same root is no change");
        assert_eq!(roots.observe(&b), Some(a.clone()));
        assert_eq!(rx.borrow_and_update().as_ref(), Some(&b));
        assert_eq!(short(&a).len(), 16);
        assert!(fingerprint(&a).starts_with(&short(&a)));
        assert_eq!(fingerprint(&a).len(), 64);
    }
}
