//! `zident certs`: the certificates of a running agent, one row per identity, in the manner
//! of `istioctl ztunnel-config certificate`.

use std::time::{Duration, SystemTime};

use http_body_util::BodyExt;
use serde_json::{Value, json};
use zident_identity::human;

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
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:15000")]
    pub admin: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Fetches and prints.
pub async fn run(args: CertsArgs) -> Result<(), String> {
    let body = get(&args.admin, "/debug/certs").await?;
    let doc: Value = serde_json::from_str(&body)
        .map_err(|e| format!("{} did not answer with /debug/certs JSON: {e}", args.admin))?;
    let now = SystemTime::now();
    let rows = certificate_rows(&doc, now);
    let roots = root_rows(&doc, now);
    let clock = (
        doc["clock_skew_seconds"].as_f64(),
        doc["clock_skew_threshold_seconds"]
            .as_f64()
            .unwrap_or(120.0),
    );
    match args.output {
        Format::Json => {
            let out = json!({
                "certificates": rows,
                "trust_bundle": roots,
                "clock_skew_seconds": clock.0,
                "clock_skew_threshold_seconds": clock.1,
            });
            println!(
                "{}",
                serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
            );
        }
        Format::Table => {
            print_tables(&rows, &roots);
            println!();
            println!("{}", clock_line(clock.0, clock.1));
        }
    }
    Ok(())
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

fn certificate_rows(doc: &Value, now: SystemTime) -> Vec<Value> {
    doc["certificates"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let rotates_in = c["rotation_at"]
                .as_str()
                .and_then(parse_time)
                .map(|t| seconds_until(now, t));
            json!({
                "identity": c["spiffe_id"],
                "state": c["state"],
                "own": c["own"],
                "serial": c["serial_number"],
                "root": short(&c["root_sha256"]),
                "not_before": c["valid_from"],
                "not_after": c["valid_until"],
                "rotation_at": c["rotation_at"],
                "rotates_in_seconds": rotates_in,
                "error": c["error"],
            })
        })
        .collect()
}

fn root_rows(doc: &Value, now: SystemTime) -> Vec<Value> {
    doc["trust_bundle"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let expires_in = r["valid_until"]
                .as_str()
                .and_then(parse_time)
                .map(|t| seconds_until(now, t));
            json!({
                "subject": r["subject"],
                "root": short(&r["sha256"]),
                "serial": r["serial_number"],
                "not_after": r["valid_until"],
                "expires_in_seconds": expires_in,
            })
        })
        .collect()
}

fn print_tables(rows: &[Value], roots: &[Value]) {
    let style = Style::detect();
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
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
        let state = text(&r["state"]);
        let state_cell = match state.as_str() {
            "Available" => style.green(&state),
            "Initializing" => style.yellow(&state),
            _ => style.red(&state),
        };
        let when = match (&r["error"], r["rotates_in_seconds"].as_i64()) {
            (Value::String(e), _) => style.red(e),
            (_, Some(s)) if s <= 0 => style.yellow("due now"),
            (_, Some(s)) => human(Duration::from_secs(s as u64)),
            _ => "-".into(),
        };
        let mut identity = text(&r["identity"]);
        if r["own"] == Value::Bool(true) {
            identity.push_str(" (agent)");
        }
        table.push(vec![
            identity,
            state_cell,
            text(&r["serial"]),
            text(&r["root"]),
            text(&r["not_before"]),
            text(&r["not_after"]),
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
        let expires = match r["expires_in_seconds"].as_i64() {
            Some(s) if s <= 0 => style.red("expired"),
            Some(s) if s < 30 * 86400 => style.yellow(&human(Duration::from_secs(s as u64))),
            Some(s) => human(Duration::from_secs(s as u64)),
            None => "-".into(),
        };
        bundle.push(vec![
            text(&r["subject"]),
            text(&r["root"]),
            text(&r["serial"]),
            text(&r["not_after"]),
            expires,
        ]);
    }
    print_table(&bundle);
}

/// The start of a SHA-256 fingerprint: enough to tell which root a certificate chains to.
fn short(fingerprint: &Value) -> Value {
    fingerprint
        .as_str()
        .map_or(Value::Null, |f| Value::String(f.chars().take(16).collect()))
}

fn parse_time(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

fn seconds_until(now: SystemTime, t: SystemTime) -> i64 {
    match t.duration_since(now) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
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
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            return Err(format!("{admin}{path} answered {status}: {body}"));
        }
        Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(10), work)
        .await
        .map_err(|_| unreachable("no answer within 10 s".into()))?
}
