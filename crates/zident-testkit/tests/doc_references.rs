//! What the docs and comments point to, the repository has: every `NAME.md` named in a source
//! file, script or document is a file of the repository, and every relative Markdown link
//! resolves. A clone has no `../shared`; a reader sent to a file that is not there is lost.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The files git would carry: everything under the root but build output and VCS data.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "target" || name.starts_with('.') && name != ".ci" {
            continue;
        }
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// `word.md` names in `text` (letters, digits, `-`, `_`, `/`, `.` before the extension).
fn md_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find(".md") {
        let end = i + at + 3;
        let after_ok = b.get(end).is_none_or(|c| !c.is_ascii_alphanumeric());
        let mut start = i + at;
        while start > 0 && (b[start - 1].is_ascii_alphanumeric() || b"-_/.".contains(&b[start - 1]))
        {
            start -= 1;
        }
        if after_ok && start < i + at {
            names.push(text[start..end].trim_start_matches("./").to_owned());
        }
        i = end;
    }
    names
}

/// Relative link targets `](target)` in Markdown.
fn md_links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|t| t.split('#').next().unwrap_or("").to_owned())
        .filter(|t| !t.is_empty() && !t.contains("://") && !t.starts_with("mailto:"))
        .collect()
}

#[test]
fn every_named_document_and_link_is_in_the_repository() {
    let root = repo_root();
    let mut all = Vec::new();
    files(&root, &mut all);
    let docs: Vec<String> = all
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert!(
        docs.iter().any(|d| d == "README.md") && docs.len() >= 4,
        "the walk found only {docs:?}"
    );
    let mut missing = Vec::new();
    for path in &all {
        let ext = path.extension().and_then(|x| x.to_str()).unwrap_or("");
        if !matches!(ext, "rs" | "md" | "toml" | "yaml" | "sh" | "") {
            continue;
        }
        // This file's own fixtures name made-up documents on purpose.
        if path.ends_with("zident-testkit/tests/doc_references.rs") {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        let shown = path
            .strip_prefix(&root)
            .unwrap_or(path)
            .display()
            .to_string();
        for name in md_names(&text) {
            let base = name.rsplit('/').next().unwrap_or(&name);
            if !docs.iter().any(|d| d == base) {
                missing.push(format!("{shown}: names {name}, which the repository lacks"));
            }
        }
        if ext == "md" {
            let dir = path.parent().unwrap_or(&root);
            for link in md_links(&text) {
                if !dir.join(&link).exists() {
                    missing.push(format!("{shown}: links to {link}, which does not exist"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_scanners_find_what_they_look_for() {
    assert_eq!(
        md_names("see `DESIGN.md` §4 and docs/mesh-file.md, not x.mdx"),
        vec!["DESIGN.md", "docs/mesh-file.md"]
    );
    assert_eq!(
        md_links("[a](docs/a.md#top) [b](https://x.example/b.md) [c](../c.md)"),
        vec!["docs/a.md", "../c.md"]
    );
}
