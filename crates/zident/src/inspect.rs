//! `zident inspect FILE`: checks a certificate chain against every rule of the X509-SVID
//! standard and zident's profile, and says which pass and why the others fail.

use std::path::PathBuf;
use std::time::SystemTime;

use zident_identity::inspect::{Expectations, Outcome, inspect};
use zident_identity::pem::certs_from_pem_or_der;
use zident_identity::{SpiffeId, TrustBundle, TrustDomain, human, rfc3339};

use crate::style::{Style, print_table};

/// Flags of `zident inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A PEM chain (leaf first) or a DER certificate.
    pub file: PathBuf,
    /// PEM roots the chain must verify to.
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// The SPIFFE ID the certificate must carry.
    #[arg(long, value_name = "SPIFFE_ID")]
    pub id: Option<String>,
    /// The trust domain the certificate must be in.
    #[arg(long, value_name = "TD")]
    pub trust_domain: Option<String>,
}

/// Prints the report; `Ok(true)` when every rule passed.
pub fn run(args: InspectArgs) -> Result<bool, String> {
    let bytes = std::fs::read(&args.file)
        .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?;
    let chain =
        certs_from_pem_or_der(&bytes).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let id = args
        .id
        .as_deref()
        .map(SpiffeId::new)
        .transpose()
        .map_err(|e| format!("--id: {e}"))?;
    let td = args
        .trust_domain
        .as_deref()
        .map(TrustDomain::new)
        .transpose()
        .map_err(|e| format!("--trust-domain: {e}"))?;
    let bundle = match &args.bundle {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            // The bundle file does not name its trust domain; verification does not need it.
            let domain = match &td {
                Some(td) => td.clone(),
                None => TrustDomain::new("unknown").map_err(|e| e.to_string())?,
            };
            Some(
                TrustBundle::from_pem(domain, &pem)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            )
        }
        None => None,
    };
    let now = SystemTime::now();
    let report = inspect(
        &chain,
        &Expectations {
            bundle: bundle.as_ref(),
            id: id.as_ref(),
            trust_domain: td.as_ref(),
        },
        now,
    );

    let style = Style::detect();
    println!(
        "{}: {} certificate{}",
        style.bold(&args.file.display().to_string()),
        report.certificates,
        if report.certificates == 1 { "" } else { "s" }
    );
    let id_text = report
        .id
        .as_ref()
        .map(|i| i.to_string())
        .unwrap_or_else(|| "(none)".into());
    println!("  SPIFFE ID  {id_text}");
    if let Some(serial) = &report.serial_hex {
        println!("  serial     {serial}");
    }
    if let Some((nb, na)) = report.validity {
        let left = match na.duration_since(now) {
            Ok(d) if now >= nb => format!("{} left", human(d)),
            Ok(_) => format!(
                "not valid for another {}",
                human(nb.duration_since(now).unwrap_or_default())
            ),
            Err(e) => format!("expired {} ago", human(e.duration())),
        };
        println!("  valid      {} to {} ({left})", rfc3339(nb), rfc3339(na));
    }
    println!();
    let rows: Vec<Vec<String>> = report
        .checks
        .iter()
        .map(|c| {
            let verdict = match c.outcome {
                Outcome::Pass => style.green("PASS"),
                Outcome::Fail => style.red("FAIL"),
                Outcome::Skip => style.dim("SKIP"),
            };
            vec![format!("  {verdict}"), c.rule.clone(), c.detail.clone()]
        })
        .collect();
    print_table(&rows);
    let failed = report
        .checks
        .iter()
        .filter(|c| c.outcome == Outcome::Fail)
        .count();
    println!();
    if failed == 0 {
        println!("{}: every rule passed", style.green("VALID"));
    } else {
        println!(
            "{}: {failed} of {} rules failed",
            style.red("INVALID"),
            report.checks.len()
        );
    }
    Ok(failed == 0)
}
