//! Rotation without drops: certificates of 3 s, 30 s of continuous traffic between two agents'
//! workloads — new tunneled connections all the time plus one long-lived connection — and at
//! least 5 rotations on each side, zero failed connections, zero lost or altered bytes.

mod common;

use common::{agent, echo, free_port, socks_connect, start_ca, tunnel};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zident_agent::RunningAgent;
use zident_identity::SpiffeId;

fn serial(a: &RunningAgent, path: &str) -> Option<String> {
    let id = SpiffeId::new(&format!("spiffe://cluster.local/{path}")).unwrap();
    a.manager.peek(&id).map(|c| c.serial_hex.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_seconds_of_traffic_across_rotations_without_a_failure() {
    let hbone_port = free_port(&[[127, 0, 0, 22], [127, 0, 0, 23]]);
    let echo_port = free_port(&[[127, 0, 0, 23]]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "trustDomain: cluster.local\n\
nodes:\n- {name: node-a, token: ta}\n- {name: node-b, token: tb}\n\
workloads:\n\
- {uid: a, name: client, namespace: default, serviceAccount: client, node: node-a, workloadIps: ['127.0.0.22'], protocol: HBONE}\n\
- {uid: b, name: server, namespace: default, serviceAccount: server, node: node-b, workloadIps: ['127.0.0.23'], protocol: HBONE}\n",
    )
    .unwrap();
    let ca = start_ca(dir.path()).await;
    let a = agent(dir.path(), &ca, "node-a", "ta", Duration::from_secs(3)).await;
    let b = agent(dir.path(), &ca, "node-b", "tb", Duration::from_secs(3)).await;
    let ta = tunnel(&a, "node-a", true, hbone_port).await;
    let _tb = tunnel(&b, "node-b", false, hbone_port).await;
    let target = SocketAddr::from(([127, 0, 0, 23], echo_port));
    echo(target).await;
    let proxy = ta.socks5_addr.unwrap();

    let failures = Arc::new(AtomicU64::new(0));
    let connections = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(30);

    // One long-lived connection, streaming across every rotation.
    let long_lived = {
        let failures = failures.clone();
        tokio::spawn(async move {
            let mut s = socks_connect(proxy, [127, 0, 0, 22], target)
                .await
                .expect("long-lived tunnel");
            let mut sent = 0u64;
            let mut i = 0u8;
            while Instant::now() < end {
                let chunk = [i; 1024];
                s.write_all(&chunk).await.unwrap();
                let mut back = [0u8; 1024];
                if s.read_exact(&mut back).await.is_err() || back != chunk {
                    failures.fetch_add(1, Ordering::SeqCst);
                    return sent;
                }
                sent += 1024;
                i = i.wrapping_add(1);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        })
    };
    // New connections all the time, from two loops.
    let mut workers = Vec::new();
    for w in 0..2u8 {
        let (failures, connections) = (failures.clone(), connections.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u32;
            while Instant::now() < end {
                n += 1;
                let message = format!("worker {w} message {n}").into_bytes();
                let ok = async {
                    let mut s = socks_connect(proxy, [127, 0, 0, 22], target).await?;
                    s.write_all(&message).await?;
                    let mut back = vec![0u8; message.len()];
                    s.read_exact(&mut back).await?;
                    if back != message {
                        return Err(std::io::Error::other("echo altered the bytes"));
                    }
                    Ok::<_, std::io::Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(10), ok).await {
                    Ok(Ok(())) => {
                        connections.fetch_add(1, Ordering::SeqCst);
                    }
                    other => {
                        if failures.fetch_add(1, Ordering::SeqCst) < 5 {
                            eprintln!("connection {n} of worker {w} failed: {other:?}");
                        }
                    }
                }
                // About 100 new connections a second per worker: steady, and within what the
                // loopback's ephemeral ports (in TIME_WAIT for a minute) allow.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    // Count distinct certificates on both sides meanwhile.
    let (mut a_serials, mut b_serials) = (Vec::new(), Vec::new());
    while Instant::now() < end {
        for (agent, path, seen) in [
            (&a, "ns/default/sa/client", &mut a_serials),
            (&b, "ns/default/sa/server", &mut b_serials),
        ] {
            if let Some(s) = serial(agent, path)
                && seen.last() != Some(&s)
            {
                seen.push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in workers {
        w.await.unwrap();
    }
    let streamed = long_lived.await.unwrap();

    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "no failed connection, no altered byte"
    );
    assert!(
        connections.load(Ordering::SeqCst) > 100,
        "new connections kept coming: {}",
        connections.load(Ordering::SeqCst)
    );
    assert!(
        streamed > 500 * 1024,
        "the long-lived connection kept streaming: {streamed} bytes"
    );
    assert!(
        a_serials.len() >= 6,
        "at least 5 rotations on the client side: {a_serials:?}"
    );
    assert!(
        b_serials.len() >= 6,
        "at least 5 rotations on the server side: {b_serials:?}"
    );
}
