//! SPIFFE IDs and trust domains, validated exactly as the SPIFFE-ID standard says.
//!
//! A SPIFFE ID is `spiffe://<trust domain>/<path>`. The rules are strict on purpose: two
//! spellings of one identity must never both be accepted, or an authorization policy written
//! for one would miss the other.

use std::fmt;
use std::str::FromStr;

/// The URI scheme every SPIFFE ID starts with (lowercase only).
const SCHEME: &str = "spiffe://";
/// The longest SPIFFE ID the standard allows, in bytes.
pub const MAX_ID_BYTES: usize = 2048;
/// The longest trust domain name the standard allows, in bytes.
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;

/// Which rule of the SPIFFE-ID standard a string broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The input was empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The input does not start with `spiffe://` (the scheme is lowercase).
    #[error("SPIFFE ID must start with \"spiffe://\" (lowercase scheme)")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is {0} bytes long; at most 255 are allowed")]
    TrustDomainTooLong(usize),
    /// The trust domain has a `:port`.
    #[error("trust domain must not contain a port")]
    PortNotAllowed,
    /// The trust domain has `user@`.
    #[error("trust domain must not contain user info")]
    UserInfoNotAllowed,
    /// A character outside `[a-z0-9.-_]` in the trust domain (uppercase included).
    #[error(
        "trust domain contains {0:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    BadTrustDomainChar(char),
    /// A `?query` part.
    #[error("SPIFFE ID must not contain a query")]
    QueryNotAllowed,
    /// A `#fragment` part.
    #[error("SPIFFE ID must not contain a fragment")]
    FragmentNotAllowed,
    /// `//` in the path.
    #[error("path contains an empty segment (\"//\")")]
    EmptySegment,
    /// A `.` or `..` segment in the path.
    #[error("path contains a {0:?} segment")]
    DotSegment(&'static str),
    /// The path ends with `/`.
    #[error("path must not end with '/'")]
    TrailingSlash,
    /// A character outside `[a-zA-Z0-9.-_]` in a path segment (percent-encoding included).
    #[error("path contains {0:?}; only letters, digits, '.', '-' and '_' are allowed in a segment")]
    BadPathChar(char),
    /// The whole ID is longer than 2048 bytes.
    #[error("SPIFFE ID is {0} bytes long; at most 2048 are allowed")]
    TooLong(usize),
    /// A trust domain was given as a SPIFFE ID with a path.
    #[error("a trust domain has no path; write just the name, e.g. \"example.org\"")]
    TrustDomainHasPath,
    /// An ID without a path was given where a workload identity is needed.
    #[error("SPIFFE ID has no path; a workload identity needs one")]
    MissingPath,
}

/// A validated trust domain name, e.g. `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or the trust domain's own SPIFFE ID
    /// (`spiffe://example.org`).
    pub fn new(name: &str) -> Result<Self, IdError> {
        if name.starts_with(SCHEME) {
            let id = SpiffeId::new(name)?;
            if id.path().is_empty() {
                return Ok(id.trust_domain());
            }
            return Err(IdError::TrustDomainHasPath);
        }
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name, e.g. `cluster.local`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own ID, `spiffe://<name>`.
    pub fn id_string(&self) -> String {
        format!("{SCHEME}{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A validated SPIFFE ID. Cheap to compare and hash; displays as the full URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: String,
    /// Byte index where the path starts (the end of the trust domain).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates `spiffe://<trust domain>[/<path>]`.
    pub fn new(uri: &str) -> Result<Self, IdError> {
        if uri.is_empty() {
            return Err(IdError::Empty);
        }
        if uri.len() > MAX_ID_BYTES {
            return Err(IdError::TooLong(uri.len()));
        }
        let rest = uri.strip_prefix(SCHEME).ok_or(IdError::WrongScheme)?;
        if rest.contains('#') {
            return Err(IdError::FragmentNotAllowed);
        }
        if rest.contains('?') {
            return Err(IdError::QueryNotAllowed);
        }
        let td_end = rest.find('/').unwrap_or(rest.len());
        validate_trust_domain(&rest[..td_end])?;
        validate_path(&rest[td_end..])?;
        Ok(Self {
            uri: uri.to_owned(),
            path_start: SCHEME.len() + td_end,
        })
    }

    /// Builds an ID from a trust domain and a path that starts with `/` (or is empty).
    pub fn from_parts(trust_domain: &TrustDomain, path: &str) -> Result<Self, IdError> {
        Self::new(&format!("{SCHEME}{}{path}", trust_domain.as_str()))
    }

    /// The Istio form `spiffe://<td>/ns/<namespace>/sa/<service account>`.
    pub fn istio(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdError> {
        Self::from_parts(
            trust_domain,
            &format!("/ns/{namespace}/sa/{service_account}"),
        )
    }

    /// `(namespace, service account)` if the path has exactly Istio's `/ns/<ns>/sa/<sa>` form.
    pub fn istio_parts(&self) -> Option<(&str, &str)> {
        let mut it = self.path().strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The trust domain part.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_str().to_owned())
    }

    /// The trust domain part, borrowed.
    pub fn trust_domain_str(&self) -> &str {
        &self.uri[SCHEME.len()..self.path_start]
    }

    /// The path, starting with `/`, or empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.uri[self.path_start..]
    }

    /// The full URI.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// The ID without its scheme, as Istio's authorization policies write principals
    /// (`cluster.local/ns/default/sa/frontend`).
    pub fn principal(&self) -> &str {
        &self.uri[SCHEME.len()..]
    }

    /// Fails with [`IdError::MissingPath`] for a trust domain ID; workloads need a path.
    pub fn require_path(self) -> Result<Self, IdError> {
        if self.path().is_empty() {
            Err(IdError::MissingPath)
        } else {
            Ok(self)
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err(IdError::TrustDomainTooLong(td.len()));
    }
    // Characters that are never allowed come first, so `[::1]` is reported as a bad
    // character rather than as a port.
    if let Some(c) = td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_' | ':' | '@'))
    {
        return Err(IdError::BadTrustDomainChar(c));
    }
    if td.contains('@') {
        return Err(IdError::UserInfoNotAllowed);
    }
    if td.contains(':') {
        return Err(IdError::PortNotAllowed);
    }
    Ok(())
}

fn validate_path(path: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    if path.ends_with('/') {
        // `spiffe://td/` is a trailing slash, not an empty segment.
        return Err(IdError::TrailingSlash);
    }
    // `path` starts with '/', so the first split item is the empty string before it.
    for segment in path.split('/').skip(1) {
        match segment {
            "" => return Err(IdError::EmptySegment),
            "." => return Err(IdError::DotSegment(".")),
            ".." => return Err(IdError::DotSegment("..")),
            _ => {}
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(IdError::BadPathChar(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valid IDs from the SPIFFE-ID standard and its edge cases.
    const VALID: &[&str] = &[
        "spiffe://example.org",
        "spiffe://example.org/a",
        "spiffe://example.org/a/b/c",
        "spiffe://cluster.local/ns/default/sa/frontend",
        "spiffe://td_with-all.chars09/path",
        "spiffe://a/B/C/UPPER",
        "spiffe://example.org/.hidden",
        "spiffe://example.org/..dots",
        "spiffe://example.org/a.b/c-d/e_f",
        "spiffe://1.2.3.4/ip-like",
        "spiffe://x/y",
        "spiffe://example.org/...",
        "spiffe://example.org/a/.../b",
        "spiffe://-/_",
        "spiffe://example.org/0123456789",
    ];

    /// Invalid IDs, each with the rule it breaks.
    fn invalid() -> Vec<(String, IdError)> {
        use IdError::*;
        let mut v: Vec<(String, IdError)> = [
            ("", Empty),
            ("example.org/a", WrongScheme),
            ("SPIFFE://example.org/a", WrongScheme),
            ("spiffe:/example.org/a", WrongScheme),
            ("https://example.org/a", WrongScheme),
            ("spiffe://", EmptyTrustDomain),
            ("spiffe:///a", EmptyTrustDomain),
            ("spiffe://Example.org/a", BadTrustDomainChar('E')),
            ("spiffe://example.org:8080/a", PortNotAllowed),
            ("spiffe://user@example.org/a", UserInfoNotAllowed),
            ("spiffe://user:pw@example.org/a", UserInfoNotAllowed),
            ("spiffe://exa mple.org/a", BadTrustDomainChar(' ')),
            ("spiffe://exa%41mple.org/a", BadTrustDomainChar('%')),
            ("spiffe://example.org/a?x=1", QueryNotAllowed),
            ("spiffe://example.org/a#frag", FragmentNotAllowed),
            ("spiffe://example.org/", TrailingSlash),
            ("spiffe://example.org/a/", TrailingSlash),
            ("spiffe://example.org//a", EmptySegment),
            ("spiffe://example.org/a//b", EmptySegment),
            ("spiffe://example.org/.", DotSegment(".")),
            ("spiffe://example.org/..", DotSegment("..")),
            ("spiffe://example.org/a/./b", DotSegment(".")),
            ("spiffe://example.org/a/../b", DotSegment("..")),
            ("spiffe://example.org/a b", BadPathChar(' ')),
            ("spiffe://example.org/a%20b", BadPathChar('%')),
            ("spiffe://example.org/a:b", BadPathChar(':')),
            ("spiffe://example.org/a@b", BadPathChar('@')),
            ("spiffe://example.org/é", BadPathChar('é')),
            ("spiffe://exämple.org/a", BadTrustDomainChar('ä')),
            ("spiffe://example.org/a*", BadPathChar('*')),
            ("spiffe://example.org/a+b", BadPathChar('+')),
            ("spiffe://example.org/~a", BadPathChar('~')),
            ("spiffe://[::1]/a", BadTrustDomainChar('[')),
        ]
        .into_iter()
        .map(|(s, e)| (s.to_owned(), e))
        .collect();
        let long_path = format!("spiffe://example.org/{}", "a".repeat(MAX_ID_BYTES));
        let long_len = long_path.len();
        v.push((long_path, TooLong(long_len)));
        let long_td = format!("spiffe://{}/a", "a".repeat(256));
        v.push((long_td, TrustDomainTooLong(256)));
        v
    }

    #[test]
    fn valid_ids_parse_and_round_trip() {
        for s in VALID {
            let id = SpiffeId::new(s).unwrap_or_else(|e| panic!("{s} should be valid: {e}"));
            assert_eq!(id.as_str(), *s);
            assert_eq!(id.to_string().parse::<SpiffeId>().as_ref(), Ok(&id));
        }
    }

    #[test]
    fn invalid_ids_name_the_rule_broken() {
        let cases = invalid();
        assert!(
            VALID.len() + cases.len() >= 40,
            "the standard wants a wide table"
        );
        for (s, want) in cases {
            assert_eq!(SpiffeId::new(&s), Err(want.clone()), "input {s:?}");
        }
    }

    #[test]
    fn exactly_max_length_is_valid() {
        let prefix = "spiffe://example.org/";
        let id = format!("{prefix}{}", "a".repeat(MAX_ID_BYTES - prefix.len()));
        assert_eq!(id.len(), MAX_ID_BYTES);
        assert!(SpiffeId::new(&id).is_ok());
    }

    #[test]
    fn parts_are_split_correctly() {
        let id = SpiffeId::new("spiffe://cluster.local/ns/default/sa/frontend").unwrap();
        assert_eq!(id.trust_domain().as_str(), "cluster.local");
        assert_eq!(id.path(), "/ns/default/sa/frontend");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/frontend");
        assert_eq!(id.istio_parts(), Some(("default", "frontend")));
        let td = SpiffeId::new("spiffe://cluster.local").unwrap();
        assert_eq!(td.path(), "");
        assert_eq!(td.require_path(), Err(IdError::MissingPath));
    }

    #[test]
    fn istio_helpers() {
        let td = TrustDomain::new("cluster.local").unwrap();
        let id = SpiffeId::istio(&td, "prod", "web").unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/prod/sa/web");
        assert!(SpiffeId::istio(&td, "bad ns", "web").is_err());
        for not_istio in [
            "spiffe://td/ns/a/sa",
            "spiffe://td/ns/a/sa/b/c",
            "spiffe://td/x/a/sa/b",
            "spiffe://td",
        ] {
            assert_eq!(SpiffeId::new(not_istio).unwrap().istio_parts(), None);
        }
    }

    #[test]
    fn trust_domain_accepts_name_or_id() {
        assert_eq!(
            TrustDomain::new("example.org").unwrap().as_str(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org").unwrap().as_str(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org/path"),
            Err(IdError::TrustDomainHasPath)
        );
        assert_eq!(TrustDomain::new(""), Err(IdError::EmptyTrustDomain));
        assert_eq!(
            TrustDomain::new("Example.org"),
            Err(IdError::BadTrustDomainChar('E'))
        );
        assert_eq!(TrustDomain::new("a:1"), Err(IdError::PortNotAllowed));
    }
}
