//! Lines for the person who started zident, on standard output.

/// Prints a line to standard output, and carries on if nobody reads it any more. Long-running
/// commands (`ca`, `agent`, `up`) print where things are; a closed pipe must not take the CA
/// or an agent down.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
pub(crate) use say;
