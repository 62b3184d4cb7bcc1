//! The CA's roots and signing keys, and how they change: the authority in force
//! ([`authority`]), the three-phase root rotation ([`rotation`]) and its schedule
//! (`schedule`), plugged-in keys from `ROOT_CA_DIR` ([`plugged`]), the ledger of issued
//! certificates that says when a step is safe ([`ledger`]), and the names of the key files
//! (`files`).

pub mod authority;
pub mod files;
pub mod ledger;
pub mod plugged;
pub mod rotation;
pub(crate) mod schedule;
