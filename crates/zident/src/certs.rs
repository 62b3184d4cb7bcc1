//! `zident certs`: the certificates of a running agent, one row per identity, in the manner
//! of `istioctl ztunnel-config certificate`.

use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use serde_json::json;
use zident_agent::http::report::{CertsReport, CrlReport};
use zident_identity::{human, parse_rfc3339};

use crate::style::{Style, print_table};

/// Output format.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
}

/// Flags of `zident certs`.
#[derive(Debug, clap::Args)]
pub struct CertsArgs {
    /// The agent's admin address.
    #[arg(long, value_name = "URL", default_value = format!("http://{}", zident_agent::defaults::ADMIN_ADDR))]
    pub admin: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Show the CA's DNS certificates in this directory (`zident ca --dns-cert-dir`) instead
    /// of an agent's certificates.
    #[arg(long, value_name = "DIR")]
    pub dns_cert_dir: Option<std::path::PathBuf>,
}

/// Fetches and prints.
pub async fn run(args: CertsArgs) -> Result<(), String> {
    if let Some(dir) = &args.dns_cert_dir {
        return dns_certs(dir, args.output);
    }
    let body = get(&args.admin, "/debug/certs").await?;
    let report: CertsReport = serde_json::from_str(&body)
        .map_err(|e| format!("{} did not answer with /debug/certs JSON: {e}", args.admin))?;
    let now = SystemTime::now();
    let rows = certificate_rows(&report, now);
    let roots = root_rows(&report, now);
    let clock = (
        report.clock_skew_seconds,
        report.clock_skew_threshold_seconds,
    );
    match args.output {
        Format::Json => {
            let out = json!({
                "certificates": rows,
                "trust_bundle": roots,
                "jwt_keys": report.jwt_keys,
                "jwt_svids": report.jwt_svids,
                "clock_skew_seconds": clock.0,
                "clock_skew_threshold_seconds": clock.1,
                "crl": report.crl,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
            );
        }
        Format::Table => {
            print_tables(&rows, &roots);
            println!();
            print_jwt(&report, now);
            println!();
            println!("{}", clock_line(clock.0, clock.1));
            println!("{}", crl_line(report.crl.as_ref()));
        }
    }
    Ok(())
}

/// The CRLs in force, in words.
fn crl_line(crl: Option<&CrlReport>) -> String {
    match crl {
        None => "CRL: none in force (the CA serves none, or none was fetched yet)".into(),
        Some(c) => format!(
            "CRL: number {}, {} revoked, next update {}{}",
            c.number,
            c.revoked,
            c.next_update.as_deref().unwrap_or("none"),
            if c.stale {
                " (STALE: kept in force until a newer one can be fetched)"
            } else {
                ""
            }
        ),
    }
}

/// How this node's clock stands against the CA's, in words.
fn clock_line(offset: Option<f64>, threshold: f64) -> String {
    match offset {
        None => "CLOCK  not measured yet (no answer from the CA so far)".into(),
        Some(o) => {
            let way = if o < 0.0 { "ahead of" } else { "behind" };
            let verdict = if o.abs() > threshold {
                format!("SKEWED beyond {threshold:.0} s: fix this node's clock (NTP)")
            } else {
                format!("ok (within {threshold:.0} s)")
            };
            format!("CLOCK  {:.1} s {way} the CA's: {verdict}", o.abs())
        }
    }
}

/// One output row per identity.
#[derive(serde::Serialize)]
struct CertRow<'a> {
    identity: &'a str,
    state: &'a str,
    own: bool,
    serial: Option<&'a str>,
    root: Option<String>,
    not_before: Option<&'a str>,
    not_after: Option<&'a str>,
    rotation_at: Option<&'a str>,
    rotates_in_seconds: Option<i64>,
    error: Option<&'a str>,
    cause: Option<&'a str>,
}

/// One output row per trust-bundle root.
#[derive(serde::Serialize)]
struct RootRow<'a> {
    subject: Option<&'a str>,
    root: Option<String>,
    serial: Option<&'a str>,
    not_after: Option<&'a str>,
    expires_in_seconds: Option<i64>,
}

fn certificate_rows(report: &CertsReport, now: SystemTime) -> Vec<CertRow<'_>> {
    report
        .certificates
        .iter()
        .map(|c| CertRow {
            identity: &c.spiffe_id,
            state: &c.state,
            own: c.own,
            serial: c.serial_number.as_deref(),
            root: c.root_sha256.as_deref().map(short),
            not_before: c.valid_from.as_deref(),
            not_after: c.valid_until.as_deref(),
            rotation_at: c.rotation_at.as_deref(),
            rotates_in_seconds: seconds_until(now, c.rotation_at.as_deref()),
            error: c.error.as_deref(),
            cause: c.cause.as_deref(),
        })
        .collect()
}

fn root_rows(report: &CertsReport, now: SystemTime) -> Vec<RootRow<'_>> {
    report
        .trust_bundle
        .iter()
        .map(|r| RootRow {
            subject: r.subject.as_deref(),
            root: r.sha256.as_deref().map(short),
            serial: r.serial_number.as_deref(),
            not_after: r.valid_until.as_deref(),
            expires_in_seconds: seconds_until(now, r.valid_until.as_deref()),
        })
        .collect()
}

fn print_tables(rows: &[CertRow<'_>], roots: &[RootRow<'_>]) {
    let style = Style::detect();
    let text = |v: Option<&str>| v.unwrap_or("-").to_owned();
    let mut table = vec![
        [
            "IDENTITY",
            "STATE",
            "SERIAL",
            "ROOT",
            "NOT BEFORE",
            "NOT AFTER",
            "ROTATES IN",
        ]
        .iter()
        .map(|h| style.bold(h))
        .collect::<Vec<_>>(),
    ];
    for r in rows {
        let state_cell = match r.state {
            "Available" => style.green(r.state),
            "Initializing" => style.yellow(r.state),
            _ => style.red(r.state),
        };
        let when = match (r.error, r.rotates_in_seconds) {
            (Some(e), _) => style.red(e),
            (_, Some(s)) if s <= 0 => style.yellow("due now"),
            (_, Some(s)) => human(Duration::from_secs(s as u64)),
            _ => "-".into(),
        };
        let mut identity = r.identity.to_owned();
        if r.own {
            identity.push_str(" (agent)");
        }
        table.push(vec![
            identity,
            state_cell,
            text(r.serial),
            text(r.root.as_deref()),
            text(r.not_before),
            text(r.not_after),
            when,
        ]);
    }
    print_table(&table);
    println!();
    let mut bundle = vec![
        [
            "TRUST BUNDLE ROOT",
            "ROOT",
            "SERIAL",
            "NOT AFTER",
            "EXPIRES IN",
        ]
        .iter()
        .map(|h| style.bold(h))
        .collect::<Vec<_>>(),
    ];
    for r in roots {
        let expires = match r.expires_in_seconds {
            Some(s) if s <= 0 => style.red("expired"),
            Some(s) if s < 30 * 86400 => style.yellow(&human(Duration::from_secs(s as u64))),
            Some(s) => human(Duration::from_secs(s as u64)),
            None => "-".into(),
        };
        bundle.push(vec![
            text(r.subject),
            text(r.root.as_deref()),
            text(r.serial),
            text(r.not_after),
            expires,
        ]);
    }
    print_table(&bundle);
}

/// The JWT-SVID keys the node trusts and the JWT-SVIDs it holds.
fn print_jwt(report: &CertsReport, now: SystemTime) {
    let style = Style::detect();
    let mut table = vec![
        ["JWT-SVID", "AUDIENCE", "KEY", "EXPIRES IN"]
            .iter()
            .map(|h| style.bold(h))
            .collect::<Vec<_>>(),
    ];
    for j in &report.jwt_svids {
        let expires = match seconds_until(now, Some(&j.expires)) {
            Some(s) if s <= 0 => style.red("expired"),
            Some(s) => human(Duration::from_secs(s as u64)),
            None => "-".into(),
        };
        table.push(vec![
            j.spiffe_id.clone(),
            j.audience.join(","),
            short(&j.kid),
            expires,
        ]);
    }
    if report.jwt_svids.is_empty() {
        table.push(vec![
            "(none fetched)".into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
    }
    print_table(&table);
    let keys: Vec<String> = report.jwt_keys.iter().map(|k| short(k)).collect();
    println!(
        "JWT-SVID KEYS  {}",
        if keys.is_empty() {
            "none (the CA's /bundle has not been read yet, or it publishes none)".into()
        } else {
            keys.join(", ")
        }
    );
}

/// `--dns-cert-dir`: the DNS certificates the CA keeps there.
fn dns_certs(dir: &std::path::Path, format: Format) -> Result<(), String> {
    let sets = zident_ca::dns_certs::list(dir)
        .map_err(|e| format!("cannot read --dns-cert-dir {}: {e}", dir.display()))?;
    if let Format::Json = format {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "dns_certificates": sets }))
                .map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let style = Style::detect();
    let now = SystemTime::now();
    let mut table = vec![
        [
            "DNS CERTIFICATE",
            "DNS NAMES",
            "SERIAL",
            "NOT AFTER",
            "RENEWS IN",
            "ROOT",
        ]
        .iter()
        .map(|h| style.bold(h))
        .collect::<Vec<_>>(),
    ];
    for c in &sets {
        let renews = match seconds_until(now, Some(&c.renews_at)) {
            Some(s) if s <= 0 => style.yellow("due now"),
            Some(s) => human(Duration::from_secs(s as u64)),
            None => "-".into(),
        };
        let root = if c.chains_to_root_cert {
            style.green("chains to root-cert.pem")
        } else {
            style.red("does not chain to root-cert.pem")
        };
        table.push(vec![
            c.secret_name.clone(),
            c.dns_names.join(","),
            c.serial.clone(),
            c.not_after.clone(),
            renews,
            root,
        ]);
    }
    if sets.is_empty() {
        println!("no DNS certificates in {}", dir.display());
        return Ok(());
    }
    print_table(&table);
    Ok(())
}

/// The start of a SHA-256 fingerprint: enough to tell which root a certificate chains to.
fn short(fingerprint: &str) -> String {
    fingerprint.chars().take(16).collect()
}

/// Whole seconds from `now` to the RFC 3339 time `t` (negative once past).
fn seconds_until(now: SystemTime, t: Option<&str>) -> Option<i64> {
    let t = parse_rfc3339(t?)?;
    Some(match t.duration_since(now) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    })
}

/// `GET admin + path` over plain HTTP/1.1, with a deadline.
pub async fn get(admin: &str, path: &str) -> Result<String, String> {
    let authority = admin
        .strip_prefix("http://")
        .ok_or_else(|| format!("--admin {admin:?}: give an http:// URL (the admin endpoint is plain HTTP on loopback)"))?
        .trim_end_matches('/');
    let unreachable = |e: String| {
        format!(
            "cannot reach the agent's admin endpoint at {admin}: {e}. Is `zident agent` (or `zident up`) running? Use --admin to point at it."
        )
    };
    let work = async {
        let tcp = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (status, body) = zident_agent::http::get::get(TokioIo::new(tcp), authority, path)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        if !status.is_success() {
            return Err(format!("{admin}{path} answered {status}: {body}"));
        }
        Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| unreachable("no answer within 10 s".into()))?
}
