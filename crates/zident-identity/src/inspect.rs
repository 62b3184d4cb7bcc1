//! A full report on a certificate chain: every rule of the X509-SVID standard and of zident's
//! certificate profile ([`crate::profile`]), each with its verdict and a one-line reason. This is what
//! `zident inspect` prints; unlike [`verify_svid`](crate::verify_svid) it does not stop at the
//! first failure.

use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::*;

use crate::bundle::TrustBundle;
use crate::format::{human, serial_hex, to_system_time};
use crate::spiffe_id::{SpiffeId, TrustDomain};
use crate::svid::{RuleResult, SvidInfo, check_time, leaf_rules, verify_chain};

/// A rule's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The rule holds.
    Pass,
    /// The rule is broken.
    Fail,
    /// The rule does not apply (it depends on one that failed, or its input was not given).
    Skip,
}

impl Outcome {
    /// `Pass` when the rule holds, else `Fail`.
    fn of(holds: bool) -> Self {
        if holds { Self::Pass } else { Self::Fail }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What the rule says.
    pub rule: String,
    /// Its verdict.
    pub outcome: Outcome,
    /// Why, in one line.
    pub detail: String,
}

/// What is expected of the chain beyond the standard.
#[derive(Debug, Clone, Default)]
pub struct Expectations<'a> {
    /// Roots the chain must verify to.
    pub bundle: Option<&'a TrustBundle>,
    /// The SPIFFE ID it must carry.
    pub id: Option<&'a SpiffeId>,
    /// The trust domain it must be in.
    pub trust_domain: Option<&'a TrustDomain>,
}

/// The report.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The SPIFFE ID, if one could be read.
    pub id: Option<SpiffeId>,
    /// Leaf serial, hex.
    pub serial_hex: Option<String>,
    /// Leaf validity.
    pub validity: Option<(SystemTime, SystemTime)>,
    /// How many certificates the chain holds.
    pub certificates: usize,
    /// Every rule, in order.
    pub checks: Vec<Check>,
}

impl Inspection {
    /// True when no rule failed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.outcome != Outcome::Fail)
    }
}

fn check(rule: impl Into<String>, outcome: Outcome, detail: impl Into<String>) -> Check {
    Check {
        rule: rule.into(),
        outcome,
        detail: detail.into(),
    }
}

fn from_rule(r: RuleResult) -> Check {
    match r.result {
        Some(Ok(detail)) => check(r.rule, Outcome::Pass, detail),
        Some(Err(e)) => check(r.rule, Outcome::Fail, e.to_string()),
        None => check(
            r.rule,
            Outcome::Skip,
            "not checked: depends on a rule above",
        ),
    }
}

/// Inspects `chain` (leaf first) at `now`.
pub fn inspect(
    chain: &[CertificateDer<'_>],
    expect: &Expectations<'_>,
    now: SystemTime,
) -> Inspection {
    let mut report = Inspection {
        id: None,
        serial_hex: None,
        validity: None,
        certificates: chain.len(),
        checks: Vec::new(),
    };
    let parsed: Vec<Result<X509Certificate<'_>, X509Error>> = chain
        .iter()
        .map(|c| {
            X509Certificate::from_der(c)
                .map(|(_, x)| x)
                .map_err(|e| match e {
                    x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => e,
                    x509_parser::nom::Err::Incomplete(_) => X509Error::InvalidCertificate,
                })
        })
        .collect();
    let leaf = match parsed.first() {
        None => {
            report.checks.push(check(
                "the file holds a certificate",
                Outcome::Fail,
                "no certificate found",
            ));
            return report;
        }
        Some(Err(e)) => {
            report.checks.push(check(
                "the leaf is valid DER X.509",
                Outcome::Fail,
                e.to_string(),
            ));
            return report;
        }
        Some(Ok(leaf)) => leaf,
    };
    report.checks.push(check(
        "the leaf is valid DER X.509",
        Outcome::Pass,
        format!("subject \"{}\"", leaf.subject()),
    ));
    for (i, p) in parsed.iter().enumerate().skip(1) {
        if let Err(e) = p {
            report.checks.push(check(
                format!("certificate {i} of the chain is valid DER X.509"),
                Outcome::Fail,
                e.to_string(),
            ));
        }
    }

    let (id, rules) = leaf_rules(leaf);
    report.checks.extend(rules.into_iter().map(from_rule));
    let not_before = to_system_time(leaf.validity().not_before);
    let not_after = to_system_time(leaf.validity().not_after);
    report.validity = Some((not_before, not_after));
    report.serial_hex = Some(serial_hex(leaf.raw_serial()));

    let info = id.clone().map(|id| SvidInfo {
        id,
        serial_hex: serial_hex(leaf.raw_serial()),
        not_before,
        not_after,
    });
    match &info {
        Some(info) => report.checks.push(match check_time(info, now) {
            Ok(()) => check(
                "valid now",
                Outcome::Pass,
                format!(
                    "{} left",
                    human(not_after.duration_since(now).unwrap_or_default())
                ),
            ),
            Err(e) => check("valid now", Outcome::Fail, e.to_string()),
        }),
        None => {
            let outcome = if now < not_before || now >= not_after {
                Outcome::Fail
            } else {
                Outcome::Pass
            };
            report
                .checks
                .push(check("valid now", outcome, "from notBefore to notAfter"));
        }
    }

    if let Some(expected) = expect.id {
        report.checks.push(match &id {
            Some(got) if got == expected => check(
                "the SPIFFE ID is the expected one",
                Outcome::Pass,
                got.as_str(),
            ),
            Some(got) => check(
                "the SPIFFE ID is the expected one",
                Outcome::Fail,
                format!("{got}, expected {expected}"),
            ),
            None => check(
                "the SPIFFE ID is the expected one",
                Outcome::Skip,
                "no SPIFFE ID to compare",
            ),
        });
    }
    if let Some(td) = expect.trust_domain {
        report.checks.push(match &id {
            Some(got) if got.trust_domain_str() == td.as_str() => {
                check("in the expected trust domain", Outcome::Pass, td.as_str())
            }
            Some(got) => check(
                "in the expected trust domain",
                Outcome::Fail,
                format!("trust domain {}, expected {td}", got.trust_domain_str()),
            ),
            None => check(
                "in the expected trust domain",
                Outcome::Skip,
                "no SPIFFE ID to compare",
            ),
        });
    }
    if let Some(bundle) = expect.bundle {
        report
            .checks
            .push(match verify_chain(&chain[0], &chain[1..], bundle, now) {
                Ok(()) => check(
                    "the chain verifies to the bundle",
                    Outcome::Pass,
                    format!("{} root(s) in the bundle", bundle.roots().len()),
                ),
                Err(e) => check(
                    "the chain verifies to the bundle",
                    Outcome::Fail,
                    e.to_string(),
                ),
            });
    }

    // zident's profile (`profile.rs`).
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    report.checks.push(check(
        "profile: lifetime at most 90 days",
        Outcome::of(lifetime <= crate::profile::MAX_TTL),
        human(lifetime),
    ));
    let serial_bits = leaf.raw_serial().iter().skip_while(|b| **b == 0).count() * 8;
    report.checks.push(check(
        "profile: serial has at least 64 bits",
        Outcome::of(serial_bits >= 64),
        format!("{serial_bits} bits"),
    ));
    match parsed.get(1) {
        Some(Ok(issuer)) => {
            let issuer_end = to_system_time(issuer.validity().not_after);
            report.checks.push(check(
                "profile: the leaf does not outlive its issuer",
                Outcome::of(not_after <= issuer_end),
                format!("issuer \"{}\"", issuer.subject()),
            ));
        }
        _ => report.checks.push(check(
            "profile: the leaf does not outlive its issuer",
            Outcome::Skip,
            "the file holds no issuer certificate",
        )),
    }
    report.id = id;
    report
}
