//! Kubernetes' naming rules, which namespaces and service accounts follow in a mesh file so
//! that every SPIFFE ID built from them (`spiffe://<td>/ns/<namespace>/sa/<account>`) is valid
//! and every path built from them (`<socket dir>/<namespace>/<name>/`) stays where it belongs.

/// Why a name breaks its rule; the text says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing was given.
    #[error("must not be empty")]
    Empty,
    /// Longer than the rule allows.
    #[error("is {len} characters long; at most {max} are allowed")]
    TooLong {
        /// The name's length.
        len: usize,
        /// The rule's limit.
        max: usize,
    },
    /// A character outside `a-z`, `0-9` and `-`, or a `-` at either end.
    #[error(
        "{0:?} may hold only lowercase letters, digits and '-', and must start and end with a letter or digit"
    )]
    BadLabel(String),
    /// A subdomain with a part that is not a label.
    #[error(
        "{0:?} may hold only lowercase letters, digits, '-' and '.', and each part between dots must start and end with a letter or digit"
    )]
    BadSubdomain(String),
    /// A dot where a label was expected (`a..b`, `.a`, `a.`).
    #[error("{0:?} has an empty part between dots")]
    EmptyPart(String),
}

/// A DNS-1123 label (a Kubernetes namespace): 1 to 63 of `a-z 0-9 -`, starting and ending with
/// a letter or digit.
pub fn check_label(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 63 {
        return Err(NameError::TooLong {
            len: name.len(),
            max: 63,
        });
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let ok_end = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !name.chars().all(ok_char) || !ok_end(name.chars().next()) || !ok_end(name.chars().last()) {
        return Err(NameError::BadLabel(name.to_owned()));
    }
    Ok(())
}

/// A DNS-1123 subdomain (a Kubernetes service account or pod name): at most 253 characters,
/// dot-separated DNS-1123 labels.
pub fn check_subdomain(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > 253 {
        return Err(NameError::TooLong {
            len: name.len(),
            max: 253,
        });
    }
    for part in name.split('.') {
        if part.is_empty() {
            return Err(NameError::EmptyPart(name.to_owned()));
        }
        check_label(part).map_err(|e| match e {
            NameError::BadLabel(_) | NameError::TooLong { .. } => {
                NameError::BadSubdomain(name.into())
            }
            other => other,
        })?;
    }
    Ok(())
}

/// A DNS name for a certificate's SAN: an RFC 1123 host name (letters of either case, digits,
/// `-`, dot-separated labels of 1 to 63, at most 253 in all) of at least two labels, or `*.`
/// followed by one (a wildcard only as the whole leftmost label, and never over a single
/// label such as `*.com`).
pub fn check_dns_name(name: &str) -> Result<(), DnsNameError> {
    let (wildcard, rest) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    if rest.contains('*') {
        return Err(DnsNameError::WildcardInside(name.to_owned()));
    }
    check_subdomain(&rest.to_ascii_lowercase()).map_err(|source| DnsNameError::Name {
        name: name.to_owned(),
        source,
    })?;
    if wildcard && !rest.contains('.') {
        return Err(DnsNameError::WildcardOverOneLabel(name.to_owned()));
    }
    Ok(())
}

/// Why a name is not a DNS name for a certificate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsNameError {
    /// A `*` other than the whole leftmost label.
    #[error("{0:?}: a wildcard may only be the whole leftmost label (`*.example.com`)")]
    WildcardInside(String),
    /// A wildcard over a single label.
    #[error("{0:?}: a wildcard must stand over at least two labels (`*.example.com`, not `*.com`)")]
    WildcardOverOneLabel(String),
    /// Not a host name.
    #[error("{name:?}: {source}")]
    Name {
        /// The name as written.
        name: String,
        /// The rule it breaks.
        source: NameError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for good in ["default", "a", "kube-system", "ns-1", "0abc"] {
            assert_eq!(check_label(good), Ok(()), "{good}");
        }
        assert_eq!(check_label(""), Err(NameError::Empty));
        for bad in ["Default", "-a", "a-", "a.b", "a/b", "a_b", "ä"] {
            assert!(
                matches!(check_label(bad), Err(NameError::BadLabel(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            check_label(&"a".repeat(64)),
            Err(NameError::TooLong { len: 64, max: 63 })
        ));
    }

    #[test]
    fn subdomains() {
        for good in ["default", "front.end", "a-1.b-2.c", "sa"] {
            assert_eq!(check_subdomain(good), Ok(()), "{good}");
        }
        assert!(matches!(
            check_subdomain("front/end"),
            Err(NameError::BadSubdomain(_))
        ));
        assert!(matches!(
            check_subdomain("front..end"),
            Err(NameError::EmptyPart(_))
        ));
        assert!(matches!(
            check_subdomain(".front"),
            Err(NameError::EmptyPart(_))
        ));
        assert!(matches!(
            check_subdomain("Front"),
            Err(NameError::BadSubdomain(_))
        ));
        assert!(matches!(
            check_subdomain(&"a.".repeat(127)),
            Err(NameError::TooLong { .. })
        ));
    }
}
