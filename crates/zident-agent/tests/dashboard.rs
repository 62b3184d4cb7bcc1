//! The dashboard in a real browser: Debian's Chromium, headless, driven over the DevTools
//! protocol. The page shows one timeline per identity, and the serial it shows changes after a
//! rotation without the page being reloaded. Screenshots go to `target/` for a person to see.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> PathBuf {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("Chromium is needed for this test: apt-get install chromium (.ci/run does)");
}

/// Starts headless Chromium on `url`; returns it and the DevTools port.
async fn launch(url: &str) -> (Browser, u16) {
    let profile = tempfile::tempdir().unwrap();
    let child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
            "--window-size=1100,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let port_file = profile.path().join("DevToolsActivePort");
    let deadline = Instant::now() + Duration::from_secs(60);
    let port = loop {
        if let Some(port) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.parse().ok()))
        {
            break port;
        }
        assert!(
            Instant::now() < deadline,
            "Chromium did not open its DevTools port"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (
        Browser {
            child,
            _profile: profile,
        },
        port,
    )
}

/// A DevTools session on the page target.
struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Page {
    async fn attach(port: u16) -> Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ws_url = loop {
            let (_, body) = curl(&format!("http://127.0.0.1:{port}/json/list"));
            let targets: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if let Some(url) = targets
                .as_array()
                .and_then(|a| a.iter().find(|t| t["type"] == "page"))
                .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            {
                break url.to_owned();
            }
            assert!(Instant::now() < deadline, "no page target: {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .expect("DevTools websocket");
        Self { ws, next_id: 0 }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let Some(Ok(Message::Text(text))) = self.ws.next().await else {
                    panic!("DevTools connection closed");
                };
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["id"] == id {
                    return v;
                }
            }
        })
        .await
        .expect("DevTools answers");
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// Evaluates JavaScript in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        r["result"]["value"].clone()
    }

    async fn screenshot(&mut self, path: &Path) {
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG image");
        std::fs::write(path, png).unwrap();
    }
}

const SHOWN: &str = r#"JSON.stringify([...document.querySelectorAll('.cert')].map(e => ({
    id: e.dataset.identity,
    serial: e.querySelector('.serial').textContent,
    timeline: !!e.querySelector('.timeline .marker.now') && !!e.querySelector('.timeline .marker.rotation'),
    state: e.querySelector('.badge').textContent })))"#;

async fn shown(page: &mut Page) -> Vec<Value> {
    let text = page.eval(SHOWN).await;
    serde_json::from_str(text.as_str().unwrap_or("[]")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_timelines_and_follows_rotations_without_a_reload() {
    logs();
    let world = World::new(0).await;
    let agent = available_agent(&world, Duration::from_secs(6)).await;

    let url = format!("http://{}/", agent.admin_addr.unwrap());
    let (_browser, port) = launch(&url).await;
    let mut page = Page::attach(port).await;

    // One timeline per identity, each with its state, serial and markers.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let cards = shown(&mut page).await;
        if cards.len() == 3
            && cards
                .iter()
                .all(|c| c["timeline"] == true && c["state"] == "Available")
        {
            break cards;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never showed three timelines: {cards:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // The clock against the CA's, as measured on the exchanges (same machine: within bounds).
    let clock = page
        .eval("document.getElementById('clock').textContent")
        .await;
    let clock = clock.as_str().unwrap_or_default();
    assert!(
        clock.contains("s behind the CA's") || clock.contains("s ahead of the CA's"),
        "{clock}"
    );
    assert!(!clock.contains("fix this node's clock"), "{clock}");
    // The CA's CRL in force (nothing revoked).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let crl = page
            .eval("(document.getElementById('crl') || {}).textContent || ''")
            .await;
        let crl = crl.as_str().unwrap_or_default().to_owned();
        if crl.contains("CRL number") && crl.contains(": 0 revoked, next update") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never showed the CRL: {crl:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fe = "spiffe://cluster.local/ns/default/sa/frontend";
    let serial_of = |cards: &[Value]| {
        cards
            .iter()
            .find(|c| c["id"] == fe)
            .and_then(|c| c["serial"].as_str())
            .map(str::to_owned)
    };
    let before = serial_of(&first).expect("frontend shown");
    assert_eq!(
        Some(before.clone()),
        common::serial_of(&agent, &common::id("ns/default/sa/frontend"))
    );

    // No data plane runs beside this agent: the tunnel table says so.
    assert_eq!(
        page.eval("document.getElementById('tunnels').textContent.trim()")
            .await,
        json!("none open")
    );

    // Mark this page load; a reload would lose the mark.
    page.eval("window.__zidentMark = 42").await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let cards = shown(&mut page).await;
        if let Some(now) = serial_of(&cards)
            && now != before
        {
            break;
        }
        assert!(Instant::now() < deadline, "the shown serial never changed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        page.eval("window.__zidentMark").await,
        json!(42),
        "the page was not reloaded"
    );

    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    std::fs::create_dir_all(&target).unwrap();
    page.screenshot(&target.join("dashboard.png")).await;
    // Readable in a narrow window: nothing wider than the viewport.
    page.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": 390, "height": 900, "deviceScaleFactor": 1, "mobile": true }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let overflow = page
        .eval("document.documentElement.scrollWidth <= window.innerWidth + 1")
        .await;
    assert_eq!(
        overflow,
        json!(true),
        "no horizontal scrolling in a 390 px window"
    );
    page.screenshot(&target.join("dashboard-narrow.png")).await;
}
