//! An agent with no mesh file takes its mesh from the CA's xDS stream: it serves the
//! identities the control plane places on its node and follows edits; a view it cannot use
//! (here: one that does not name its node, the usual NODE_NAME typo) is NACKed with the
//! reason, counted by the CA, and leaves the agent unready rather than serving nothing.

mod common;

use std::time::Duration;

use common::*;
use zident_agent::{AgentConfig, MeshSourceConfig};

const WAIT: Duration = Duration::from_secs(15);

fn xds_config(world: &World, node: &str, cache: Option<std::path::PathBuf>) -> AgentConfig {
    let mut c = world.agent_config(Duration::from_secs(60));
    c.mesh = MeshSourceConfig::ControlPlane { cache };
    c.node = node.into();
    c
}

fn holds(agent: &zident_agent::RunningAgent, path: &str) -> bool {
    state_of(agent, &id(path))
        .is_some_and(|s| matches!(s.state, zident_agent::CertState::Available(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_mesh_file_follows_the_control_plane() {
    let world = World::new(0).await;
    let cache = world.dir.path().join("agent/xds.pb");
    let agent = start_agent(xds_config(&world, NODE, Some(cache.clone()))).await;
    eventually(WAIT, "node-a's workload identities are Available", || {
        holds(&agent, "ns/default/sa/frontend") && holds(&agent, "ns/default/sa/backend")
    })
    .await;
    assert!(*agent.mesh_ready.borrow());
    assert!(
        state_of(&agent, &id("ns/default/sa/other")).is_none(),
        "node-b's stays off"
    );
    assert_eq!(
        agent.mesh.borrow().mesh().workloads.len(),
        4,
        "every node's workloads, for routing"
    );
    let status = agent.xds.as_ref().expect("xDS status").get();
    assert!(status.connected, "{status:?}");
    assert_eq!(status.view_from, "stream");
    assert!(status.acks >= 4 && status.nacks == 0, "{status:?}");
    assert!(cache.exists(), "the last good view is on disk");

    // An edit in the CA's file: a new workload on node-a gets its certificate, a removed one
    // loses it.
    let edited = mesh(0)
        .replace(
            "- {uid: be, name: backend, namespace: default, serviceAccount: backend, node: node-a, workloadIps: ['127.0.0.3'], protocol: HBONE}\n",
            "- {uid: new, name: reports, namespace: default, serviceAccount: reports, node: node-a, workloadIps: ['127.0.0.9'], protocol: HBONE}\n",
        );
    assert_ne!(edited, mesh(0));
    std::fs::write(world.dir.path().join("mesh.tmp"), edited).unwrap();
    std::fs::rename(world.dir.path().join("mesh.tmp"), world.mesh_path()).unwrap();
    eventually(
        WAIT,
        "the new workload's identity arrives, the removed one's goes",
        || {
            holds(&agent, "ns/default/sa/reports")
                && state_of(&agent, &id("ns/default/sa/backend")).is_none()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_that_does_not_name_the_node_is_nacked_with_the_reason() {
    logs();
    let world = World::new(0).await;
    let agent = start_agent(xds_config(&world, "node-typo", None)).await;
    let status = agent.xds.clone().expect("xDS status");
    eventually(WAIT, "the agent NACKs the view", || {
        status.get().last_nack.is_some()
    })
    .await;
    let nack = status.get().last_nack.unwrap();
    let reason = nack.error.unwrap_or_default();
    assert!(
        reason.contains("node-typo") && reason.contains("NODE_NAME"),
        "the NACK says what to fix: {reason}"
    );
    assert!(
        !*agent.mesh_ready.borrow(),
        "nothing usable arrived: not ready"
    );
    let (code, body) = curl(&format!(
        "http://{}/healthz/ready",
        agent.readiness_addr.unwrap()
    ));
    assert_eq!(code, 503);
    assert!(
        body.contains("waiting for the mesh from the control plane"),
        "{body}"
    );
    assert!(
        log_text().contains("xDS push rejected by the client"),
        "the CA logs it"
    );
    assert!(
        agent.manager.snapshot().is_empty(),
        "no identity is served from a view that was refused"
    );
}
