//! What zident's tests share, so that each test crate's `tests/common` holds only what is its
//! own (a CA, an agent, a mesh):
//!
//! - [`eventually`]: wait for a condition with a deadline (tests never sleep for a fixed time
//!   to synchronize);
//! - [`capture_logs`], [`captured`], [`logged`]: the test process's own log lines, to assert
//!   what an operator would read;
//! - [`curl`]: the curl command line, a client nobody here wrote;
//! - [`python`]: the Python with the `spiffe`, `grpcio` and `PyJWT` packages, clients nobody
//!   here wrote;
//! - [`ca`]: a CA for a test's directory, started in the test process;
//! - [`netns`]: nodes in their own network namespaces on a shared bridge;
//! - [`postgres`]: a real PostgreSQL cluster in a temporary directory;
//! - [`kube_api`]: a real kube-apiserver and etcd, one per test binary, and [`kube_replica`]:
//!   a CA replica keeping its state there, as a process of its own;
//! - [`modgraph`]: module cycles in a crate's source (the check behind the architecture's
//!   promise that no module imports one that imports it back).
//!
//! A dev-dependency only; never published.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod ca;
pub mod kube_api;
pub mod kube_replica;
pub mod modgraph;
pub mod netns;
pub mod postgres;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it holds, failing the test with `what` after `timeout`.
pub async fn eventually(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The Python that has `spiffe`, `grpcio` and `PyJWT`: `ZIDENT_PYTHON`, or the virtual
/// environment `.ci/run` makes at `target/pyenv`. Fails the test with the command that makes
/// it when neither exists: these clients are part of the suite, not optional.
pub fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("ZIDENT_PYTHON") {
        return p.into();
    }
    let venv =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/python3");
    assert!(
        venv.exists(),
        "this test needs Python with the spiffe and grpcio packages: run .ci/run, or \
         python3 -m venv target/pyenv && target/pyenv/bin/pip install spiffe==0.3.2 grpcio==1.85.3 PyJWT[crypto]==2.15.1"
    );
    venv
}

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

/// Captures this test process's logs at `filter` (`RUST_LOG` syntax); the first call's filter
/// wins, later calls change nothing.
pub fn capture_logs(filter: &str) {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buf
    });
}

/// What was logged so far (empty before [`capture_logs`]).
pub fn captured() -> String {
    LOGS.get()
        .map(|b| String::from_utf8_lossy(&b.lock().unwrap_or_else(|e| e.into_inner())).into_owned())
        .unwrap_or_default()
}

/// Waits until the captured logs contain `needle`, failing after 20 s.
pub async fn logged(needle: &str) {
    eventually(
        Duration::from_secs(20),
        &format!("a log line with {needle:?}"),
        || captured().contains(needle),
    )
    .await
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `curl -sS --max-time 10 ARGS -w '\n%{http_code}'`: (HTTP status, 0 when there was no
/// answer; body and curl's own messages).
pub fn curl(args: &[&str]) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10"]);
    run_curl(cmd, args)
}

/// Runs `cmd` (a curl command line so far) with `-w '\n%{http_code}' ARGS` and splits what it
/// printed into the status and the rest.
pub(crate) fn run_curl(mut cmd: std::process::Command, args: &[&str]) -> (u16, String) {
    let out = cmd
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs (apt-get install curl; .ci/run does)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (
        code.trim().parse().unwrap_or(0),
        body.to_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Runs the openssl command line in `dir`, failing the test with its stderr if it fails;
/// returns what it printed (stdout, then stderr).
pub fn openssl(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command line (install the openssl package)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A self-signed P-256 CA root made by openssl, as an operator makes one: `key` and `cert`
/// (PEM) in `dir`, subject `subject` (e.g. `/O=cluster.local`), valid for `days`, with
/// critical basicConstraints CA:true and keyUsage keyCertSign + cRLSign.
pub fn openssl_root(dir: &std::path::Path, key: &str, cert: &str, subject: &str, days: u32) {
    let days = days.to_string();
    let _ = openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            key,
            "-subj",
            subject,
            "-days",
            &days,
            "-out",
            cert,
            "-addext",
            "basicConstraints=critical,CA:true",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// `len` bytes no compressor or pattern shortcut would carry for free (xorshift64), for
/// tests that carry bulk data and compare it byte for byte.
pub fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
