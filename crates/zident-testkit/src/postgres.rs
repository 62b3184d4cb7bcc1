//! A real PostgreSQL for a test: a fresh cluster in a temporary directory, listening on a
//! loopback port of its own, stopped and removed when dropped. Needs Debian's `postgresql`
//! package (`initdb`, `pg_ctl`); as root, the server runs as the `postgres` user, since
//! PostgreSQL refuses to run as root. [`Postgres::start`] says why it cannot start, and the
//! test skips with that message.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running PostgreSQL cluster.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// Server options beyond the port, socket directory and listen address.
    options: String,
}

fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop()
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(|u| u == "0"))
        })
        .unwrap_or(false)
}

impl Postgres {
    /// Makes and starts a cluster; its superuser is `zident`, with no password (trust, on
    /// loopback only).
    pub fn start() -> Result<Self, String> {
        Self::start_with(None)
    }

    /// Like [`Postgres::start`], but TCP connections must use TLS with `cert_pem`/`key_pem`
    /// (a plain one is refused by `pg_hba.conf`).
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Result<Self, String> {
        Self::start_with(Some((cert_pem, key_pem)))
    }

    fn start_with(tls: Option<(&str, &str)>) -> Result<Self, String> {
        let bin = find_bin().ok_or(
            "no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql; .ci/run does)",
        )?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let as_postgres = is_root();
        if as_postgres {
            let out = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .output()
                .map_err(|e| format!("chown: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cannot give {} to the postgres user: {}",
                    dir.path().display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut options = String::new();
        if let Some((cert, key)) = tls {
            let write = |name: &str, data: &str, mode: u32| -> Result<String, String> {
                use std::os::unix::fs::PermissionsExt;
                let p = dir.path().join(name);
                std::fs::write(&p, data).map_err(|e| e.to_string())?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| e.to_string())?;
                if as_postgres {
                    Command::new("chown")
                        .args(["postgres:postgres"])
                        .arg(&p)
                        .output()
                        .map_err(|e| e.to_string())?;
                }
                Ok(p.to_string_lossy().into_owned())
            };
            let cert = write("server.crt", cert, 0o644)?;
            let key = write("server.key", key, 0o600)?;
            let hba = write(
                "pg_hba.conf",
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n",
                0o644,
            )?;
            options = format!(
                " -c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key} -c hba_file={hba}"
            );
        }
        let pg = Self {
            dir,
            bin,
            port,
            as_postgres,
            options,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "zident",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        pg.start_again()?;
        Ok(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let path = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A URL for the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://zident@127.0.0.1:{}/postgres", self.port)
    }

    /// Where the server's log is.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Stops the server (fast shutdown: sessions are ended, as on a database outage).
    pub fn stop(&self) -> Result<(), String> {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
    }

    /// Starts the server again on the same port and data.
    pub fn start_again(&self) -> Result<(), String> {
        let sockets = self.dir.path().to_string_lossy().into_owned();
        let options = format!(
            "-p {} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200{}",
            self.port, self.options
        );
        let log = self.log().to_string_lossy().into_owned();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        )
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }
}
