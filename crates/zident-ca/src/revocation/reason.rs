//! Why a certificate was revoked: RFC 5280's CRLReason codes (5.3.1), by the names the RFC
//! gives them. `certificateHold` and `removeFromCRL` are left out: a revocation here is final
//! for the certificate (a denial of reissue is what an operator lifts).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A CRLReason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reason {
    /// 0: no reason given.
    Unspecified,
    /// 1: the certificate's key is known or suspected to be compromised.
    KeyCompromise,
    /// 2: the CA's key is.
    #[serde(rename = "cACompromise")]
    CaCompromise,
    /// 3: the subject's name or other information changed.
    AffiliationChanged,
    /// 4: the certificate was replaced.
    Superseded,
    /// 5: the certificate is no longer needed.
    CessationOfOperation,
    /// 9: a privilege the certificate carries was withdrawn.
    PrivilegeWithdrawn,
    /// 10: the attribute authority was compromised.
    #[serde(rename = "aACompromise")]
    AaCompromise,
}

const ALL: [Reason; 8] = [
    Reason::Unspecified,
    Reason::KeyCompromise,
    Reason::CaCompromise,
    Reason::AffiliationChanged,
    Reason::Superseded,
    Reason::CessationOfOperation,
    Reason::PrivilegeWithdrawn,
    Reason::AaCompromise,
];

impl Reason {
    /// The RFC's name.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "keyCompromise",
            Reason::CaCompromise => "cACompromise",
            Reason::AffiliationChanged => "affiliationChanged",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessationOfOperation",
            Reason::PrivilegeWithdrawn => "privilegeWithdrawn",
            Reason::AaCompromise => "aACompromise",
        }
    }

    /// rcgen's code for it.
    pub(crate) fn rcgen(self) -> rcgen::RevocationReason {
        use rcgen::RevocationReason as R;
        match self {
            Reason::Unspecified => R::Unspecified,
            Reason::KeyCompromise => R::KeyCompromise,
            Reason::CaCompromise => R::CaCompromise,
            Reason::AffiliationChanged => R::AffiliationChanged,
            Reason::Superseded => R::Superseded,
            Reason::CessationOfOperation => R::CessationOfOperation,
            Reason::PrivilegeWithdrawn => R::PrivilegeWithdrawn,
            Reason::AaCompromise => R::AaCompromise,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is no reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a revocation reason; use one of: unspecified, keyCompromise, cACompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn, aACompromise"
)]
pub struct UnknownReason(pub String);

impl std::str::FromStr for Reason {
    type Err = UnknownReason;
    /// The RFC's name, in any case, with or without dashes or underscores (`key-compromise`).
    fn from_str(s: &str) -> Result<Self, UnknownReason> {
        let plain = |t: &str| {
            t.chars()
                .filter(|c| *c != '-' && *c != '_')
                .flat_map(char::to_lowercase)
                .collect::<String>()
        };
        let wanted = plain(s);
        ALL.into_iter()
            .find(|r| plain(r.name()) == wanted)
            .ok_or_else(|| UnknownReason(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_read_by_their_rfc_names_in_any_spelling_and_written_as_the_rfc_does() {
        for r in ALL {
            assert_eq!(r.name().parse::<Reason>(), Ok(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.name()));
        }
        assert_eq!("key-compromise".parse(), Ok(Reason::KeyCompromise));
        assert_eq!("CA_COMPROMISE".parse(), Ok(Reason::CaCompromise));
        let err = "certificateHold".parse::<Reason>().unwrap_err();
        assert!(err.to_string().contains("keyCompromise"), "{err}");
    }
}
