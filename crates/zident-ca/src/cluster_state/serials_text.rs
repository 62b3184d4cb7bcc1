//! A replica's valid certificates as the text of its serials record
//! (`zident-ca-serials-<replica>`): one JSON array per line,
//! `[at, notAfter, "serial", "issuer key id", "node" or null, "SPIFFE ID"]`. With it, any
//! replica answers a revocation request for a replica that is gone (its pod and its data dir
//! with it), as its own ledger would have.
//!
//! A ConfigMap holds at most 1 MiB: a replica with more valid certificates than fit lists the
//! newest (they live longest) and says how many it left out; those are revoked only by the
//! replica itself, from its ledger, while it runs.

use zident_identity::unix_seconds;

use crate::roots::ledger::{Certificate, Issuance, IssuedCertificate};

/// The most text one record holds (a ConfigMap's limit is 1 MiB, with its metadata).
const MAX_BYTES: usize = 900 * 1024;

type Line = (u64, u64, String, String, Option<String>, String);

/// `certificates`' unexpired entries at `now` as text, newest first; and how many did not fit.
pub(crate) fn encode(
    certificates: &[IssuedCertificate],
    now: std::time::SystemTime,
) -> (String, usize) {
    encode_within(certificates, unix_seconds(now), MAX_BYTES)
}

fn encode_within(certificates: &[IssuedCertificate], now: u64, max: usize) -> (String, usize) {
    let mut valid: Vec<&IssuedCertificate> = certificates
        .iter()
        .filter(|c| c.issuance.not_after > now)
        .collect();
    valid.sort_by(|a, b| {
        b.issuance
            .at
            .cmp(&a.issuance.at)
            .then(a.certificate.serial.cmp(&b.certificate.serial))
    });
    let mut text = String::new();
    let mut left_out = 0;
    for c in valid {
        let line: Line = (
            c.issuance.at,
            c.issuance.not_after,
            c.certificate.serial.clone(),
            c.certificate.issuer.clone(),
            c.certificate.node.clone(),
            c.id.clone(),
        );
        let Ok(line) = serde_json::to_string(&line) else {
            continue;
        };
        if left_out > 0 || text.len() + line.len() + 1 > max {
            left_out += 1;
            continue;
        }
        text.push_str(&line);
        text.push('\n');
    }
    (text, left_out)
}

/// The certificates of one record; a line that does not parse is skipped and counted.
pub(crate) fn decode(text: &str) -> (Vec<IssuedCertificate>, usize) {
    let mut skipped = 0;
    let certificates = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let parsed = serde_json::from_str::<Line>(l).ok();
            if parsed.is_none() {
                skipped += 1;
            }
            let (at, not_after, serial, issuer, node, id) = parsed?;
            Some(IssuedCertificate {
                id,
                issuance: Issuance {
                    at,
                    not_before: at,
                    not_after,
                },
                certificate: Certificate {
                    serial,
                    node,
                    issuer,
                },
            })
        })
        .collect();
    (certificates, skipped)
}

/// Whether every certificate a record's `text` names has expired by `now` (Unix seconds).
pub(crate) fn all_expired(text: &str, now: u64) -> bool {
    decode(text).0.iter().all(|c| c.issuance.not_after <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(serial: &str, at: u64, node: Option<&str>) -> IssuedCertificate {
        IssuedCertificate {
            id: "spiffe://td/ns/a b/sa/web".into(),
            issuance: Issuance {
                at,
                not_before: at,
                not_after: at + 100,
            },
            certificate: Certificate {
                serial: serial.into(),
                node: node.map(str::to_owned),
                issuer: "ab12".into(),
            },
        }
    }

    #[test]
    fn certificates_round_trip_without_the_expired_and_a_bad_line_is_skipped() {
        let certs = [
            cert("0a", 10, Some("n1")),
            cert("0b", 20, None),
            cert("0c", 0, None),
        ];
        let (text, left_out) = encode_within(&certs, 105, MAX_BYTES);
        assert_eq!(left_out, 0);
        assert!(
            !all_expired(&text, 119) && all_expired(&text, 120),
            "0b lives to 120"
        );
        let (back, skipped) = decode(&(text + "not json\n"));
        assert_eq!(skipped, 1);
        assert_eq!(back.len(), 2, "0c expired at 100: {back:?}");
        assert_eq!(back[0].certificate.serial, "0b", "newest first");
        assert_eq!(back[1].certificate.node.as_deref(), Some("n1"));
        assert_eq!(back[1].id, "spiffe://td/ns/a b/sa/web");
        assert_eq!(back[1].issuance.at, 10);
        assert_eq!(back[1].issuance.not_after, 110);
    }

    #[test]
    fn what_does_not_fit_leaves_the_oldest_out_and_is_counted() {
        let certs: Vec<_> = (0..100u64)
            .map(|n| cert(&format!("{n:02x}"), n, None))
            .collect();
        let (text, left_out) = encode_within(&certs, 0, 2_000);
        assert!(text.len() <= 2_000);
        let (back, _) = decode(&text);
        assert_eq!(back.len() + left_out, 100);
        assert!(left_out > 0);
        assert!(
            back.iter().all(|c| c.issuance.at >= left_out as u64),
            "the newest are kept"
        );
    }
}
