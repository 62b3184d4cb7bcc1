//! One crate's modules as the graph needs them: for each module (a file, or an inline `mod x
//! { … }`), the modules it declares, the items it defines, what its `use` items bind, and every
//! path it names (in `use` trees, inline in code, and in path strings of attributes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::lex::{Token, tokens};

/// A module's path from the crate root (`[]` is the root).
pub type ModPath = Vec<String>;

/// What one module holds.
#[derive(Debug, Default, Clone)]
pub struct Module {
    /// Where it is written (its file; an inline module names its file too).
    pub file: PathBuf,
    /// The modules it declares, by name.
    pub children: BTreeSet<String>,
    /// The names of the items it defines (functions, types, traits, constants, macros, …).
    pub items: BTreeSet<String>,
    /// What each `use` binds: a name to the path it stands for.
    pub bindings: BTreeMap<String, Vec<String>>,
    /// The modules whose names a `use … ::*` brings in, as paths.
    pub globs: Vec<Vec<String>>,
    /// Every path it names, as written: `use` paths (a glob's ends in `*`), paths inline in
    /// code, and path strings.
    pub refs: Vec<Vec<String>>,
}

/// Every module of the crate whose root file is `root` (`src/lib.rs` or `src/main.rs`).
pub fn crate_modules(root: &Path) -> Result<BTreeMap<ModPath, Module>, String> {
    let mut out = BTreeMap::new();
    load_file(root, vec![], true, &mut out)?;
    Ok(out)
}

/// Every module of one source text, as if it were a crate root (for tests of the graph).
pub fn text_modules(files: &[(&str, &str)]) -> Result<BTreeMap<ModPath, Module>, String> {
    let mut out = BTreeMap::new();
    for (path, src) in files {
        let modpath: ModPath = if path.is_empty() {
            vec![]
        } else {
            path.split("::").map(str::to_owned).collect()
        };
        parse_into(src, modpath, PathBuf::from(path), &mut out);
    }
    Ok(out)
}

fn load_file(
    file: &Path,
    modpath: ModPath,
    owns_dir: bool,
    out: &mut BTreeMap<ModPath, Module>,
) -> Result<(), String> {
    let src = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let declared = parse_into(&src, modpath.clone(), file.to_owned(), out);
    // Children of a file module live beside lib.rs / main.rs / mod.rs, or in a folder named
    // after the file.
    let dir = match (owns_dir, file.parent()) {
        (true, Some(d)) => d.to_owned(),
        (false, Some(d)) => d.join(file.file_stem().unwrap_or_default()),
        (_, None) => return Err(format!("{} has no folder", file.display())),
    };
    for (inner, name) in declared {
        let mut child = modpath.clone();
        child.extend(inner.iter().cloned());
        child.push(name.clone());
        let mut base = dir.clone();
        for seg in &inner {
            base = base.join(seg);
        }
        let flat = base.join(format!("{name}.rs"));
        let nested = base.join(&name).join("mod.rs");
        if flat.exists() {
            load_file(&flat, child, false, out)?;
        } else if nested.exists() {
            load_file(&nested, child, true, out)?;
        } else {
            return Err(format!(
                "{} declares `mod {name};` but neither {} nor {} exists",
                file.display(),
                flat.display(),
                nested.display()
            ));
        }
    }
    Ok(())
}

/// Parses `src` as module `modpath` (and its inline modules) into `out`; returns the file
/// modules it declares (`mod x;`), each with the inline modules it sits in.
fn parse_into(
    src: &str,
    modpath: ModPath,
    file: PathBuf,
    out: &mut BTreeMap<ModPath, Module>,
) -> Vec<(Vec<String>, String)> {
    let toks = tokens(src);
    // The inline modules open at this point: (name, brace depth at which it closes).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut declared_files = Vec::new();
    let current = |inline: &[(String, usize)]| -> ModPath {
        let mut p = modpath.clone();
        p.extend(inline.iter().map(|(n, _)| n.clone()));
        p
    };
    out.entry(modpath.clone()).or_default().file = file.clone();
    let mut i = 0;
    while i < toks.len() {
        let here = current(&inline);
        match &toks[i] {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            Token::Ident(kw) if kw == "mod" => {
                if let Some(Token::Ident(name)) = toks.get(i + 1) {
                    out.entry(here.clone())
                        .or_default()
                        .children
                        .insert(name.clone());
                    match toks.get(i + 2) {
                        Some(Token::Punct('{')) => {
                            inline.push((name.clone(), depth));
                            depth += 1;
                            let mut p = here.clone();
                            p.push(name.clone());
                            out.entry(p).or_default().file = file.clone();
                            i += 3;
                            continue;
                        }
                        Some(Token::Punct(';')) => {
                            declared_files.push((
                                inline.iter().map(|(n, _)| n.clone()).collect(),
                                name.clone(),
                            ));
                        }
                        _ => {}
                    }
                    i += 2;
                    continue;
                }
            }
            Token::Ident(kw) if kw == "use" && starts_item(&toks, i) => {
                let end = toks[i..]
                    .iter()
                    .position(|t| *t == Token::Punct(';'))
                    .map_or(toks.len(), |p| i + p);
                let mut entries = Vec::new();
                use_tree(&toks[i + 1..end], &[], &mut entries);
                let m = out.entry(here.clone()).or_default();
                for (path, binding) in entries {
                    match binding {
                        Binding::Glob => m.globs.push(path[..path.len() - 1].to_vec()),
                        Binding::Name(n) if n != "_" => {
                            m.bindings.insert(n, path.clone());
                        }
                        Binding::Name(_) => {}
                    }
                    m.refs.push(path);
                }
                i = end + 1;
                continue;
            }
            Token::Ident(kw) if is_item_keyword(kw) => {
                if let Some(Token::Ident(name)) = toks.get(i + 1)
                    && name != "fn"
                {
                    out.entry(here.clone())
                        .or_default()
                        .items
                        .insert(name.clone());
                }
            }
            Token::Ident(kw) if kw == "macro_rules" => {
                if let (Some(Token::Punct('!')), Some(Token::Ident(name))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    out.entry(here.clone())
                        .or_default()
                        .items
                        .insert(name.clone());
                }
            }
            Token::Ident(_)
                if (i == 0 || toks[i - 1] != Token::PathSep)
                    && toks.get(i + 1) == Some(&Token::PathSep) =>
            {
                // Kept whatever its first segment: a name `use` binds later in the file
                // counts too; the resolver drops paths into other crates.
                let (path, next) = inline_path(&toks, i);
                out.entry(here.clone()).or_default().refs.push(path);
                i = next;
                continue;
            }
            Token::Str(s) => {
                if let Some(path) = path_in_string(s) {
                    out.entry(here.clone()).or_default().refs.push(path);
                }
            }
            _ => {}
        }
        i += 1;
    }
    declared_files
}

/// Whether the `use` at `i` begins an item (not `#[…use…]` inside an attribute or a field
/// named `use` — keywords cannot be field names, so only `pub use`, `pub(crate) use` and a
/// plain `use` are left).
fn starts_item(toks: &[Token], i: usize) -> bool {
    i == 0
        || matches!(
            toks[i - 1],
            Token::Punct(';') | Token::Punct('{') | Token::Punct('}') | Token::Punct(']')
        )
        || toks[i - 1] == Token::Ident("pub".into())
        || toks[i - 1] == Token::Punct(')')
}

fn is_item_keyword(kw: &str) -> bool {
    matches!(
        kw,
        "fn" | "struct" | "enum" | "trait" | "type" | "const" | "static" | "union"
    )
}

/// What one leaf of a `use` tree binds.
enum Binding {
    Name(String),
    Glob,
}

/// Expands a `use` tree (`a::b::{c, d::{e as f, self}, *}`) into full paths and bindings.
/// A glob's path ends in `*`.
fn use_tree(toks: &[Token], prefix: &[String], out: &mut Vec<(Vec<String>, Binding)>) {
    let start_len = prefix.len();
    let mut path = prefix.to_vec();
    // `self` inside a group binds the group's prefix.
    let mut binds_prefix = false;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Token::Ident(s) if s == "as" => {
                if let Some(Token::Ident(alias)) = toks.get(i + 1) {
                    out.push((path.clone(), Binding::Name(alias.clone())));
                    return;
                }
            }
            Token::Ident(s) if s == "self" && start_len > 0 && path.len() == start_len => {
                binds_prefix = true;
            }
            Token::Ident(s) => path.push(s.clone()),
            Token::Punct('*') => {
                path.push("*".into());
                out.push((path, Binding::Glob));
                return;
            }
            Token::Punct('{') => {
                let close = matching(toks, i);
                for part in split_commas(&toks[i + 1..close]) {
                    use_tree(part, &path, out);
                }
                return;
            }
            _ => {}
        }
        i += 1;
    }
    if (path.len() > start_len || binds_prefix)
        && let Some(last) = path.last().cloned()
    {
        out.push((path, Binding::Name(last)));
    }
}

fn matching(toks: &[Token], open: usize) -> usize {
    let mut depth = 0;
    for (j, t) in toks.iter().enumerate().skip(open) {
        match t {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    toks.len()
}

fn split_commas(toks: &[Token]) -> Vec<&[Token]> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (j, t) in toks.iter().enumerate() {
        match t {
            Token::Punct('{') => depth += 1,
            Token::Punct('}') => depth -= 1,
            Token::Punct(',') if depth == 0 => {
                parts.push(&toks[start..j]);
                start = j + 1;
            }
            _ => {}
        }
    }
    parts.push(&toks[start..]);
    parts
}

/// The path `a::b::c` starting at `i`, and the index past it.
fn inline_path(toks: &[Token], mut i: usize) -> (Vec<String>, usize) {
    let mut path = Vec::new();
    while let Some(Token::Ident(s)) = toks.get(i) {
        path.push(s.clone());
        if toks.get(i + 1) == Some(&Token::PathSep) {
            i += 2;
        } else {
            i += 1;
            break;
        }
    }
    (path, i)
}

/// A string that is nothing but a path from the crate (`"crate::http::json::opt_time"`), as
/// serde's `with`, `serialize_with` and `default` attributes name functions.
fn path_in_string(s: &str) -> Option<Vec<String>> {
    let parts: Vec<&str> = s.split("::").collect();
    let first = *parts.first()?;
    let ident = |p: &&str| {
        !p.is_empty()
            && p.chars().all(|c| c == '_' || c.is_ascii_alphanumeric())
            && !p.starts_with(|c: char| c.is_ascii_digit())
    };
    (parts.len() > 1 && matches!(first, "crate" | "super" | "self") && parts.iter().all(ident))
        .then(|| parts.into_iter().map(str::to_owned).collect())
}
