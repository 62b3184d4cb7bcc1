//! A semaphore with priorities: at most N certificate requests in flight, and when a slot
//! frees up, the most urgent waiter gets it (a new connection waiting on a certificate goes
//! before a background renewal).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// How urgent a certificate request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// A renewal ahead of expiry.
    Background = 0,
    /// A workload just appeared; its certificate is fetched ahead of need.
    Warmup = 1,
    /// Something is waiting for this certificate right now.
    RealTime = 2,
}

struct State {
    available: usize,
    /// One queue per priority, index = priority.
    waiters: [VecDeque<oneshot::Sender<()>>; 3],
}

/// The gate. Cheap to clone.
#[derive(Clone)]
pub struct PriorityGate {
    state: Arc<Mutex<State>>,
}

/// A slot; released when dropped.
pub struct Permit {
    gate: PriorityGate,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

impl PriorityGate {
    /// A gate with `slots` concurrent permits (at least one).
    pub fn new(slots: usize) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                available: slots.max(1),
                waiters: Default::default(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot at `priority`.
    pub async fn acquire(&self, priority: Priority) -> Permit {
        let rx = {
            let mut state = self.lock();
            let nobody_ahead = state.waiters[priority as usize..]
                .iter()
                .all(VecDeque::is_empty);
            if state.available > 0 && nobody_ahead {
                state.available -= 1;
                return Permit { gate: self.clone() };
            }
            let (tx, rx) = oneshot::channel();
            state.waiters[priority as usize].push_back(tx);
            rx
        };
        // If this future is dropped after a slot was handed to it but before it ran, the
        // guard gives the slot back.
        let mut guard = Waiting {
            rx: Some(rx),
            gate: self.clone(),
        };
        if let Some(rx) = guard.rx.as_mut() {
            // The sender is only dropped after sending or when the gate is gone.
            let _ = rx.await;
        }
        guard.rx = None;
        Permit { gate: self.clone() }
    }

    fn release(&self) {
        let mut state = self.lock();
        for queue in state.waiters.iter_mut().rev() {
            while let Some(tx) = queue.pop_front() {
                if tx.send(()).is_ok() {
                    return;
                }
            }
        }
        state.available += 1;
    }

    /// Free slots right now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.lock().available
    }
}

struct Waiting {
    rx: Option<oneshot::Receiver<()>>,
    gate: PriorityGate,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if rx.try_recv().is_ok() {
                self.gate.release();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_most_urgent_waiter_goes_first() {
        let gate = PriorityGate::new(1);
        let held = gate.acquire(Priority::Background).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for p in [Priority::Background, Priority::Warmup, Priority::RealTime] {
            let (g, order) = (gate.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = g.acquire(p).await;
                order.lock().unwrap().push(p);
            }));
            // Let each task queue up before the next (a condition, not a timing guess).
            while gate.lock().waiters[p as usize].is_empty() {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            vec![Priority::RealTime, Priority::Warmup, Priority::Background]
        );
        assert_eq!(gate.available(), 1);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_does_not_leak_its_slot() {
        let gate = PriorityGate::new(1);
        let held = gate.acquire(Priority::Warmup).await;
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move {
                let _p = gate.acquire(Priority::Warmup).await;
            }
        });
        while gate.lock().waiters[1].is_empty() {
            tokio::task::yield_now().await;
        }
        waiting.abort();
        let _ = waiting.await;
        drop(held);
        let p = tokio::time::timeout(Duration::from_secs(5), gate.acquire(Priority::Background))
            .await
            .expect("the slot came back");
        drop(p);
        assert_eq!(gate.available(), 1);
    }

    #[tokio::test]
    async fn never_more_than_the_limit() {
        let gate = PriorityGate::new(3);
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let (gate, in_flight, peak) = (gate.clone(), in_flight.clone(), peak.clone());
                tokio::spawn(async move {
                    let p = if i % 2 == 0 {
                        Priority::Warmup
                    } else {
                        Priority::Background
                    };
                    let _permit = gate.acquire(p).await;
                    let now = in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    peak.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 3);
        assert_eq!(gate.available(), 3);
    }
}
