//! Findings as Kubernetes Events on the objects they are about, so that `kubectl describe pod`
//! shows why a pod is not in the mesh. Each finding is published once per version of its object
//! (a rebuild that finds the same thing again says nothing new), from a task of its own with a
//! bounded queue: the mesh is never held up by the API server's answer to an Event.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::connection::{Connection, REQUEST_TIMEOUT};
use crate::finding::{Finding, Severity};

/// Events waiting to be sent beyond this are dropped (and counted by the caller's log).
const QUEUE: usize = 1024;

/// Publishes findings as Events.
pub struct EventPublisher {
    queue: mpsc::Sender<Finding>,
    published: HashSet<Finding>,
    task: JoinHandle<()>,
}

impl Drop for EventPublisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventPublisher {
    /// Events reported as `controller` (e.g. `zident-ca`), from `instance` (this replica).
    pub fn new(api: &Connection, controller: &str, instance: Option<String>) -> Self {
        let recorder = Recorder::new(
            api.client.clone(),
            Reporter {
                controller: controller.into(),
                instance,
            },
        );
        let (queue, mut rx) = mpsc::channel::<Finding>(QUEUE);
        let task = tokio::spawn(async move {
            while let Some(finding) = rx.recv().await {
                let reference = ObjectReference {
                    api_version: Some(finding.object.api_version.into()),
                    kind: Some(finding.object.kind.into()),
                    namespace: Some(finding.object.namespace.clone()).filter(|n| !n.is_empty()),
                    name: Some(finding.object.name.clone()),
                    uid: Some(finding.object.uid.clone()).filter(|u| !u.is_empty()),
                    resource_version: Some(finding.object.resource_version.clone())
                        .filter(|v| !v.is_empty()),
                    ..Default::default()
                };
                let event = Event {
                    type_: EventType::Warning,
                    reason: finding.reason.into(),
                    note: Some(truncate(&finding.message, 1000)),
                    action: match finding.severity {
                        Severity::Refused => "LeftOutOfMesh".into(),
                        Severity::Degraded => "PartlyEnforced".into(),
                    },
                    secondary: None,
                };
                match tokio::time::timeout(REQUEST_TIMEOUT, recorder.publish(&event, &reference))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(target: "zident::kube", object = %finding.object, "cannot record the Event: {e}")
                    }
                    Err(_) => {
                        tracing::warn!(target: "zident::kube", object = %finding.object, "recording the Event timed out")
                    }
                }
            }
        });
        Self {
            queue,
            published: HashSet::new(),
            task,
        }
    }

    /// Publishes the findings not published before; forgets those no longer found, so that a
    /// problem that comes back is reported again. Returns the findings that are new.
    pub fn publish(&mut self, findings: &[Finding]) -> Vec<Finding> {
        let current: HashSet<Finding> = findings.iter().cloned().collect();
        let new: Vec<Finding> = findings
            .iter()
            .filter(|f| !self.published.contains(*f))
            .cloned()
            .collect();
        for f in &new {
            if self.queue.try_send(f.clone()).is_err() {
                tracing::warn!(target: "zident::kube", object = %f.object, "the Event queue is full; this finding is logged but gets no Event");
            }
        }
        self.published = current;
        new
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
