//! What a replica issued, as the text of its ConfigMap: one line per identity,
//! `<at> <notBefore> <notAfter> <SPIFFE ID>` (Unix seconds). A ConfigMap holds at most 1 MiB,
//! so a replica with more identities than fit writes the ones that fit and folds the rest into
//! one cautious line (`*` for the ID) that makes activation wait at least as long as any of
//! them would: issued at the earliest of their times, renewing at the latest of their points.

use std::collections::HashMap;

use crate::roots::ledger::Issuance;

/// The most text one record holds (a ConfigMap's limit is 1 MiB, with its metadata).
const MAX_BYTES: usize = 900 * 1024;
/// The ID of the folded line.
const FOLDED: &str = "*";

/// `issued`'s unexpired entries at `now` as text, oldest renewal point first.
pub(crate) fn encode(issued: &HashMap<String, Issuance>, now: u64) -> String {
    encode_within(issued, now, MAX_BYTES)
}

fn encode_within(issued: &HashMap<String, Issuance>, now: u64, max: usize) -> String {
    let mut entries: Vec<(&String, &Issuance)> =
        issued.iter().filter(|(_, i)| i.not_after > now).collect();
    // The latest renewals are the ones activation waits for: those are kept whole.
    entries.sort_by(|a, b| {
        b.1.renewal_point(0)
            .cmp(&a.1.renewal_point(0))
            .then(a.0.cmp(b.0))
    });
    let mut text = String::new();
    let mut folded: Option<Issuance> = None;
    for (id, i) in entries {
        let line = format!("{} {} {} {id}\n", i.at, i.not_before, i.not_after);
        // Room is kept for the folded line.
        if folded.is_none() && text.len() + line.len() + 64 <= max {
            text.push_str(&line);
            continue;
        }
        folded = Some(match folded {
            None => *i,
            Some(f) => fold(f, *i),
        });
    }
    if let Some(f) = folded {
        text.push_str(&format!(
            "{} {} {} {FOLDED}\n",
            f.at, f.not_before, f.not_after
        ));
    }
    text
}

/// One issuance that waits at least as long as both: the earlier issue time (so it counts as
/// issued before any prepare either does), the later renewal point and expiry.
fn fold(a: Issuance, b: Issuance) -> Issuance {
    let (late, _) = if a.renewal_point(0) >= b.renewal_point(0) {
        (a, b)
    } else {
        (b, a)
    };
    Issuance {
        at: a.at.min(b.at),
        not_before: late.not_before,
        not_after: late.not_after.max(a.not_after.max(b.not_after)),
    }
}

/// The entries of one record; a line that does not parse (written by hand, cut short) is
/// skipped and counted.
pub(crate) fn decode(text: &str) -> (Vec<(String, Issuance)>, usize) {
    let mut skipped = 0;
    let entries = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|line| {
            let parsed = parse_line(line);
            if parsed.is_none() {
                skipped += 1;
            }
            parsed
        })
        .collect();
    (entries, skipped)
}

fn parse_line(line: &str) -> Option<(String, Issuance)> {
    let mut parts = line.splitn(4, ' ');
    let mut n = || parts.next()?.parse::<u64>().ok();
    let (at, not_before, not_after) = (n()?, n()?, n()?);
    let id = parts.next()?.to_owned();
    Some((
        id,
        Issuance {
            at,
            not_before,
            not_after,
        },
    ))
}

/// Whether every certificate a record's `text` names has expired by `now` (Unix seconds).
pub(crate) fn all_expired(text: &str, now: u64) -> bool {
    decode(text).0.iter().all(|(_, i)| i.not_after <= now)
}

/// Adds `entries` to `latest`, keeping each identity's latest issuance.
pub(crate) fn merge(latest: &mut HashMap<String, Issuance>, entries: Vec<(String, Issuance)>) {
    for (id, i) in entries {
        // The folded lines of two replicas stay apart: both must be waited for.
        let id = if id == FOLDED {
            format!("{FOLDED}{}", latest.len())
        } else {
            id
        };
        match latest.get(&id) {
            Some(held) if held.at >= i.at => {}
            _ => {
                latest.insert(id, i);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roots::ledger::waiting;

    fn i(at: u64, nb: u64, na: u64) -> Issuance {
        Issuance {
            at,
            not_before: nb,
            not_after: na,
        }
    }

    #[test]
    fn text_round_trips_and_expired_entries_are_left_out() {
        let issued: HashMap<String, Issuance> = [
            ("spiffe://td/a".to_string(), i(100, 90, 1000)),
            ("spiffe://td/b c".to_string(), i(200, 190, 2000)),
            ("spiffe://td/old".to_string(), i(1, 1, 50)),
        ]
        .into();
        let text = encode(&issued, 60);
        let (entries, skipped) = decode(&(text + "garbage line\n12 x\n"));
        assert_eq!(skipped, 2);
        let back: HashMap<String, Issuance> = entries.into_iter().collect();
        assert_eq!(back.len(), 2);
        assert_eq!(back["spiffe://td/b c"], i(200, 190, 2000));
    }

    #[test]
    fn what_does_not_fit_is_folded_so_activation_waits_at_least_as_long() {
        let issued: HashMap<String, Issuance> = (0..200u64)
            .map(|n| {
                (
                    format!("spiffe://td/ns/x/sa/{n:04}"),
                    i(100 + n, 100 + n, 1100 + 3 * n),
                )
            })
            .collect();
        let text = encode_within(&issued, 0, 2_000);
        assert!(text.len() <= 2_000, "{}", text.len());
        let (entries, _) = decode(&text);
        assert!(entries.len() < 200 && entries.iter().any(|(id, _)| id == FOLDED));
        let mut kept = HashMap::new();
        merge(&mut kept, entries);
        // For any prepare time and any now, the last waiter of the kept text renews no earlier
        // than the last of all.
        for prepared in [100, 150, 250, 299, 400] {
            for now in [0, 300, 600, 700, 800] {
                let last = |m: &HashMap<String, Issuance>| {
                    waiting(m, prepared, now, 0).last().map(|w| w.renews_by)
                };
                assert!(
                    last(&kept) >= last(&issued),
                    "prepared {prepared}, now {now}: {:?} < {:?}",
                    last(&kept),
                    last(&issued)
                );
            }
        }
    }

    #[test]
    fn merging_keeps_each_identitys_latest_and_every_folded_line() {
        let mut latest = HashMap::new();
        merge(
            &mut latest,
            vec![("a".into(), i(10, 10, 100)), (FOLDED.into(), i(5, 5, 50))],
        );
        merge(
            &mut latest,
            vec![("a".into(), i(8, 8, 80)), (FOLDED.into(), i(6, 6, 60))],
        );
        assert_eq!(latest["a"].at, 10);
        assert_eq!(latest.len(), 3);
    }
}
