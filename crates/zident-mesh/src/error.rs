//! Why a mesh file was refused.

use std::path::PathBuf;

use crate::origin::MeshOrigin;

/// Why a mesh file was refused. The message names the file and, where the YAML parser knows
/// it, the line and column.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The file could not be read.
    #[error("cannot read mesh file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key, or a field has a bad value.
    #[error("mesh file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A rule across fields is broken (duplicate names, a token given twice, ...).
    #[error("{origin}{}: {field}: {message}", at_line(.line))]
    Invalid {
        /// Where the mesh came from.
        origin: MeshOrigin,
        /// Where the entry at fault is written, when it can be found in the text.
        line: Option<usize>,
        /// Where, e.g. `nodes[1].token`.
        field: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

fn at_line(line: &Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}
