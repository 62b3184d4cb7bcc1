//! Log lines to stdout from a thread of their own, in batches.
//!
//! A request must never wait on a write to a slow pipe or terminal, so lines are written by a
//! background thread. Handing it each line by itself would cost a wake-up of that thread (and a
//! switch to it, on a node whose proxy has one core) per line: the CA writes a line per issued
//! certificate. Here a line is appended to a shared buffer; the writer thread takes everything
//! gathered since its last write, writes it in one call, and then lets the next lines gather
//! for [`COALESCE`]. A line that comes while the writer is idle is written at once.
//!
//! Nothing is dropped: when the buffer passes [`LIMIT`] because stdout does not keep up, the
//! callers wait for the writer (as before with a bounded queue). Dropping the [`FlushGuard`]
//! writes what is left.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long lines gather after a write before the next one.
const COALESCE: Duration = Duration::from_millis(10);

/// Above this many buffered bytes, a caller waits for the writer.
const LIMIT: usize = 4 << 20;

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    closed: bool,
}

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    /// The writer waits here for lines (or for the close).
    ready: Condvar,
    /// Callers above [`LIMIT`] wait here for a write to finish.
    drained: Condvar,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The `MakeWriter` for the fmt layer: each event's line goes to the shared buffer.
#[derive(Clone)]
pub struct BatchedStdout {
    shared: Arc<Queue>,
}

/// Writes what is still buffered, and stops the writer thread, when dropped.
pub struct FlushGuard {
    shared: Arc<Queue>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread over `out`.
pub fn start(out: impl Write + Send + 'static) -> std::io::Result<(BatchedStdout, FlushGuard)> {
    let shared = Arc::new(Queue::default());
    let writer = shared.clone();
    let thread = std::thread::Builder::new()
        .name("zident-log".into())
        .spawn(move || write_batches(&writer, out))?;
    Ok((
        BatchedStdout {
            shared: shared.clone(),
        },
        FlushGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_batches(shared: &Queue, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let closed = {
            let mut state = shared.lock();
            while state.pending.is_empty() && !state.closed {
                state = shared.ready.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            // Swap buffers: both keep their capacity, so a steady stream allocates nothing.
            std::mem::swap(&mut batch, &mut state.pending);
            state.closed
        };
        shared.drained.notify_all();
        if !batch.is_empty() {
            // Nowhere to report a failed write to stdout; the lines are gone either way.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
        }
        if closed {
            return;
        }
        std::thread::sleep(COALESCE);
    }
}

impl Write for BatchedStdout {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.lock();
        while state.pending.len() > LIMIT && !state.closed {
            state = self
                .shared
                .drained
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        let was_empty = state.pending.is_empty();
        state.pending.extend_from_slice(line);
        drop(state);
        if was_empty {
            self.shared.ready.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedStdout {
    type Writer = BatchedStdout;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
        self.shared.drained.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Write` that keeps what it is given, and counts the calls.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut inner = self.0.lock().unwrap_or_else(|e| e.into_inner());
            inner.0.extend_from_slice(buf);
            inner.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_in_order_and_in_fewer_writes() {
        let sink = Sink::default();
        let (writer, guard) = start(sink.clone()).expect("writer thread");
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    let mut w = writer.make_writer();
                    for i in 0..5_000 {
                        w.write_all(format!("{t} {i}\n").as_bytes()).expect("write");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer");
        }
        drop(guard);
        let (bytes, writes) = sink.0.lock().expect("sink").clone();
        let text = String::from_utf8(bytes).expect("utf-8");
        let mut next = [0usize; 4];
        for line in text.lines() {
            let (t, i) = line.split_once(' ').expect("a whole line");
            let t: usize = t.parse().expect("thread");
            assert_eq!(
                i.parse::<usize>().expect("index"),
                next[t],
                "order of thread {t}"
            );
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4], "every line written once");
        assert!(writes < 20_000, "{writes} writes for 20,000 lines");
    }

    #[test]
    fn a_line_written_while_idle_is_not_held_back() {
        let sink = Sink::default();
        let (writer, _guard) = start(sink.clone()).expect("writer thread");
        writer.make_writer().write_all(b"one\n").expect("write");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while sink.0.lock().expect("sink").0 != b"one\n" {
            assert!(std::time::Instant::now() < deadline, "line never written");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
