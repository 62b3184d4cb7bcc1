//! The CA's roots and signing keys, and how they change: the authority in force
//! ([`authority`]), the rules of the three-phase root rotation ([`rotation`]), the seam to
//! where roots live ([`store`]) and the data-dir store ([`dir_store`]; PostgreSQL's is in
//! `datastore`), a new generation's material ([`generation`]), plugged-in keys from
//! `ROOT_CA_DIR` ([`plugged`]), the ledger of issued certificates that says when a step is safe
//! ([`ledger`]), and the names of the key files (`files`).

pub mod authority;
pub mod dir_store;
pub mod files;
pub mod generation;
pub mod ledger;
pub mod plugged;
pub mod rotation;
pub mod store;
