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

impl MeshError {
    /// The top-level entry a refusal is about, e.g. `("workloads", 3)` for
    /// `workloads[3] (default/a).workloadIps[0]`: lets a source that builds one mesh from many
    /// objects (the Kubernetes API) leave out the one at fault instead of refusing them all.
    pub fn entry(&self) -> Option<(&str, usize)> {
        let Self::Invalid { field, .. } = self else {
            return None;
        };
        let (section, rest) = field.split_once('[')?;
        let (index, _) = rest.split_once(']')?;
        Some((section, index.parse().ok()?))
    }
}

fn at_line(line: &Option<usize>) -> String {
    line.map(|l| format!(", line {l}")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_the_section_and_index() {
        let e = |field: &str| MeshError::Invalid {
            origin: MeshOrigin::Kubernetes("https://k".into()),
            line: None,
            field: field.into(),
            message: String::new(),
        };
        assert_eq!(
            e("workloads[3] (default/a).workloadIps[0]").entry(),
            Some(("workloads", 3))
        );
        assert_eq!(e("services[12]").entry(), Some(("services", 12)));
        assert_eq!(e("nodes").entry(), None);
        assert_eq!(e("trustDomain").entry(), None);
    }
}
