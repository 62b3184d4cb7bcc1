//! Logging: text or JSON lines on stdout, written by a background thread, with a filter that
//! the agent's `/logging` endpoint can change at run time.

use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use clap::ValueEnum;

use crate::batched_stdout::{self, FlushGuard};

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Changes the live log filter.
pub struct LogHandle {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl zident_agent::LogControl for LogHandle {
    fn level(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_level(&self, filter: &str) -> Result<(), zident_agent::LogFilterError> {
        let parsed =
            EnvFilter::try_new(filter).map_err(|e| zident_agent::LogFilterError::Invalid {
                filter: filter.to_owned(),
                message: e.to_string(),
            })?;
        self.handle
            .reload(parsed)
            .map_err(|e| zident_agent::LogFilterError::Refused(e.to_string()))?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = filter.to_owned();
        Ok(())
    }
}

/// Sets up tracing: `RUST_LOG` if set, else `info`.
///
/// Lines are written to stdout by a background thread, in batches ([`batched_stdout`]), so a
/// request never waits on a write to a slow pipe or terminal. The returned guard writes what
/// is buffered when dropped, so it must live until the process exits.
pub fn init(format: LogFormat) -> std::io::Result<(LogHandle, FlushGuard)> {
    let initial = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(&initial).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::stdout().is_terminal();
    let (writer, guard) = batched_stdout::start(std::io::stdout())?;
    let output = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    Ok((
        LogHandle {
            handle,
            current: Mutex::new(initial),
        },
        guard,
    ))
}
