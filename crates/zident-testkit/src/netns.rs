//! Nodes in their own network namespaces, as users lay a mesh out: each node gets a namespace
//! with loopback up and one leg on a shared bridge (in a namespace of its own), so nodes reach
//! each other only over that link. Needs root (`ip netns`); [`Lan::new`] says why not
//! otherwise, and the test skips with that message.
//!
//! Everything is removed when the values drop: processes are killed, namespaces deleted.

use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A bridge and the namespaces plugged into it, `10.<net>.0.<n>/24`.
pub struct Lan {
    prefix: String,
    net: u8,
    switch: String,
    nodes: Vec<String>,
}

/// Runs `ip ARGS`; the error carries what `ip` said.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (apt-get install iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lan {
    /// A bridge on `10.<net>.0.0/24` in a namespace named after `prefix` (keep it short and
    /// unique per test: namespaces are global to the machine). Fails when namespaces cannot be
    /// made here (not root, no `ip`).
    pub fn new(prefix: &str, net: u8) -> Result<Self, String> {
        let prefix = format!("{prefix}{}", std::process::id() % 100_000);
        let switch = format!("{prefix}-sw");
        ip(&["netns", "add", &switch])?;
        let lan = Self {
            prefix,
            net,
            switch,
            nodes: Vec::new(),
        };
        ip(&["-n", &lan.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan.switch, "link", "set", "br0", "up"])?;
        Ok(lan)
    }

    /// Adds node `name` at `10.<net>.0.<host>`; returns its namespace's name.
    pub fn node(&mut self, name: &str, host: u8) -> Result<String, String> {
        let ns = format!("{}-{name}", self.prefix);
        ip(&["netns", "add", &ns])?;
        self.nodes.push(ns.clone());
        self.plug(&format!("v{host}"), Some(&ns), host)?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Plugs the test's own network namespace into the bridge at `10.<net>.0.<host>`, for a
    /// process that must reach both the nodes and something only on this machine's loopback
    /// (a control plane beside the test's Kubernetes API server). Removed with the bridge.
    pub fn host_leg(&mut self, host: u8) -> Result<String, String> {
        self.plug(&format!("{}h", self.prefix), None, host)?;
        Ok(self.addr(host))
    }

    /// A veth pair: `inside` in namespace `ns` (`None`: the test's own) at
    /// `10.<net>.0.<host>/24`, up; its peer on the bridge.
    fn plug(&self, inside: &str, ns: Option<&str>, host: u8) -> Result<(), String> {
        let outside = format!("p{host}");
        let mut add = vec!["link", "add", inside];
        if let Some(ns) = ns {
            add.extend(["netns", ns]);
        }
        add.extend([
            "type",
            "veth",
            "peer",
            "name",
            &outside,
            "netns",
            &self.switch,
        ]);
        ip(&add)?;
        let in_ns = |args: &[&str]| match ns {
            Some(ns) => ip(&[&["-n", ns], args].concat()),
            None => ip(args),
        };
        let addr = format!("10.{}.0.{host}/24", self.net);
        in_ns(&["addr", "add", &addr, "dev", inside])?;
        in_ns(&["link", "set", inside, "up"])?;
        ip(&["-n", &self.switch, "link", "set", &outside, "master", "br0"])?;
        ip(&["-n", &self.switch, "link", "set", &outside, "up"])
    }

    /// The address of node `host`.
    pub fn addr(&self, host: u8) -> String {
        format!("10.{}.0.{host}", self.net)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.switch)) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A process running in a namespace, killed when dropped.
pub struct NsProcess {
    child: Child,
    /// Where its stdout and stderr go.
    pub log: std::path::PathBuf,
}

impl NsProcess {
    /// Starts `program args…` in namespace `ns`, its output to `log`.
    pub fn spawn(ns: &str, program: &Path, args: &[&str], log: &Path) -> Self {
        let out = std::fs::File::create(log).expect("create the log file");
        let err = out.try_clone().expect("clone the log file handle");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start a process with ip netns exec");
        Self {
            child,
            log: log.to_owned(),
        }
    }

    /// Kills it (SIGKILL) and waits for it, as a crash would end it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `curl -sS --max-time 5 ARGS -w '\n%{http_code}'` in namespace `ns`: (HTTP status, 0
/// when there was no answer; body and curl's own messages).
pub fn curl_in(ns: &str, args: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "curl", "-sS", "--max-time", "5"]);
    crate::run_curl(cmd, args)
}

/// A web server (Python's `http.server`) on `ip:8080` in namespace `ns`, answering
/// `GET /whoami` with `who`; its files and log under `dir`.
pub fn whoami_server(ns: &str, ip: &str, who: &str, dir: &Path) -> NsProcess {
    let www = dir.join(format!("www-{who}"));
    std::fs::create_dir_all(&www).expect("create the web root");
    std::fs::write(www.join("whoami"), who).expect("write /whoami");
    let root = www.to_string_lossy().into_owned();
    NsProcess::spawn(
        ns,
        Path::new("python3"),
        &[
            "-m",
            "http.server",
            "8080",
            "--bind",
            ip,
            "--directory",
            &root,
        ],
        &dir.join(format!("www-{who}.log")),
    )
}
