//! Reading a mesh file: YAML into [`MeshFile`], then every rule of `check.rs`, so that no
//! caller can hold a file that was not checked whole.

use std::path::Path;

use crate::error::MeshError;
use crate::file::MeshFile;
use crate::origin::MeshOrigin;

impl MeshFile {
    /// Parses mesh-file YAML; `path` is only used in messages.
    pub fn parse(path: &Path, yaml: &str) -> Result<Self, MeshError> {
        let mesh: Self = serde_yaml_ng::from_str(yaml).map_err(|e| MeshError::Parse {
            path: path.to_owned(),
            message: with_line(yaml, e.to_string()),
        })?;
        crate::check::check(&mesh, &MeshOrigin::file(path), yaml)?;
        Ok(mesh)
    }

    /// Checks a mesh that was built rather than read (a view received from the control plane)
    /// by every rule a file must pass, except that its nodes carry no token. `origin` (the
    /// control plane, or its copy on disk) is named in messages.
    pub fn received(self, origin: &MeshOrigin) -> Result<Self, MeshError> {
        crate::check::check(&self, origin, "")?;
        Ok(self)
    }

    /// Reads and parses a mesh file.
    pub fn load(path: &Path) -> Result<Self, MeshError> {
        let yaml = std::fs::read_to_string(path).map_err(|source| MeshError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &yaml)
    }
}

/// Errors raised at the top level of the document carry no line from the parser. Find the
/// line from what the message names: the unknown key, or the key and its rejected value.
fn with_line(yaml: &str, message: String) -> String {
    if message.contains(" at line ") {
        return message;
    }
    let quoted = |open: char, close: char| {
        let start = message.find(open)? + open.len_utf8();
        let end = start + message[start..].find(close)?;
        Some(message[start..end].to_owned())
    };
    let (key, value) = if message.starts_with("unknown field") {
        (quoted('`', '`'), None)
    } else {
        let key = message.split_whitespace().next().map(str::to_owned);
        (key, quoted('"', '"'))
    };
    let Some(key) = key else { return message };
    let found = yaml.lines().position(|line| {
        let line = line.trim_start().trim_start_matches("- ").trim_start();
        line.strip_prefix(key.as_str())
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
            && value.as_ref().is_none_or(|v| line.contains(v.as_str()))
    });
    match found {
        Some(i) => format!("{message} at line {}", i + 1),
        None => message,
    }
}
