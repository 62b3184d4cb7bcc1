//! Module cycles in a crate: which module imports one that imports it back.
//!
//! A module depends on another when it names an item of it, however it is written: in a `use`
//! tree, inline in code (`crate::ca::clock::ClockSkew::new(…)`), relative to itself or its
//! parent (`self::`, `super::`, a child module's name, a name a `use` bound), or in a path
//! string of an attribute (`#[serde(serialize_with = "crate::http::json::opt_time")]`). A
//! re-export is followed to the module that defines the item, so naming `crate::Thing` that
//! `lib.rs` re-exports from `thing.rs` depends on `thing.rs`, not on `lib.rs`. Naming a module
//! alone (`use crate::ca::clock;`) binds a name and is no dependency until an item of it is
//! named. Inline modules (`mod tests { … }`) are modules of their own.
//!
//! Comments, messages and other literals are never read as paths (see `lex`).

mod lex;
mod parse;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub use parse::ModPath;
use parse::Module;

/// One module cycle: the modules in it, in order (each depends on the next, the last on the
/// first), with one path that makes each dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    /// The modules, each with the path by which it depends on the next.
    pub steps: Vec<(String, String)>,
    /// Every module that depends on itself through the others (a set can hold several cycles;
    /// `steps` is the shortest through its first module).
    pub members: Vec<String>,
}

impl std::fmt::Display for Cycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (module, by)) in self.steps.iter().enumerate() {
            if i > 0 {
                write!(f, " -> ")?;
            }
            write!(f, "{module} (by `{by}`)")?;
        }
        if let Some((first, _)) = self.steps.first() {
            write!(f, " -> {first}")?;
        }
        if self.members.len() > self.steps.len() {
            write!(f, " [in one set with: {}]", self.members.join(", "))?;
        }
        Ok(())
    }
}

/// The module cycles of the crate whose root file is `root` (`src/lib.rs`, `src/main.rs`, a
/// test or a bench).
pub fn crate_cycles(root: &Path) -> Result<Vec<Cycle>, String> {
    Ok(cycles(&parse::crate_modules(root)?))
}

/// Every dependency between the modules of the crate whose root file is `root`, as
/// `(from, to)` names (`crate::a::b`), for checking that the graph sees what it should.
pub fn crate_dependencies(root: &Path) -> Result<BTreeSet<(String, String)>, String> {
    let modules = parse::crate_modules(root)?;
    Ok(edges(&modules)
        .into_iter()
        .flat_map(|(from, to)| {
            let from = name(&from);
            to.into_keys().map(move |t| (from.clone(), name(&t)))
        })
        .collect())
}

/// The module cycles of a crate given as texts, `("", lib.rs)`, `("a::b", b.rs)`, … (for the
/// checker's own tests).
pub fn text_cycles(files: &[(&str, &str)]) -> Vec<Cycle> {
    cycles(&parse::text_modules(files).unwrap_or_default())
}

/// The dependencies between modules, each with one path that makes it.
fn edges(modules: &BTreeMap<ModPath, Module>) -> BTreeMap<ModPath, BTreeMap<ModPath, String>> {
    let mut out: BTreeMap<ModPath, BTreeMap<ModPath, String>> = BTreeMap::new();
    for (from, m) in modules {
        let entry = out.entry(from.clone()).or_default();
        for path in &m.refs {
            if let Some(to) = target(modules, from, path, 0)
                && &to != from
            {
                entry.entry(to).or_insert_with(|| path.join("::"));
            }
        }
    }
    out
}

/// Where `path`, named in module `from`, leads: the module reached by its leading module
/// names, then through re-exports to the module that defines the item. `None` for a path into
/// another crate, or one that names a module and no item.
fn target(
    modules: &BTreeMap<ModPath, Module>,
    from: &ModPath,
    path: &[String],
    depth: usize,
) -> Option<ModPath> {
    if depth > 16 {
        return None;
    }
    let (module, rest) = absolute(modules, from, path, depth)?;
    let name = rest.first()?;
    if name == "*" {
        return Some(module);
    }
    let m = modules.get(&module)?;
    if m.items.contains(name) {
        return Some(module);
    }
    if let Some(bound) = m.bindings.get(name)
        && !(module == *from && depth == 0 && bound.as_slice() == path)
    {
        let mut via = bound.clone();
        via.extend(rest[1..].iter().cloned());
        return target(modules, &module, &via, depth + 1);
    }
    for glob in &m.globs {
        let mut via = glob.clone();
        via.extend(rest.iter().cloned());
        if let Some((g, _)) = absolute(modules, &module, glob, depth + 1)
            && let Some(gm) = modules.get(&g)
            && (gm.items.contains(name) || gm.bindings.contains_key(name))
        {
            return target(modules, &module, &via, depth + 1);
        }
    }
    Some(module)
}

/// The module a path's leading segments reach, and the segments left after it.
fn absolute(
    modules: &BTreeMap<ModPath, Module>,
    from: &ModPath,
    path: &[String],
    depth: usize,
) -> Option<(ModPath, Vec<String>)> {
    let first = path.first()?;
    let (mut at, mut rest): (ModPath, &[String]) = match first.as_str() {
        "crate" => (vec![], &path[1..]),
        "self" => (from.clone(), &path[1..]),
        "super" => {
            let mut at = from.clone();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                at.pop();
                rest = &rest[1..];
            }
            (at, rest)
        }
        name => {
            let m = modules.get(from)?;
            if m.children.contains(name) {
                (from.clone(), path)
            } else if let Some(bound) = m.bindings.get(name) {
                if depth > 16 || bound.first() == Some(first) && bound.len() == 1 {
                    return None;
                }
                let mut via = bound.clone();
                via.extend(path[1..].iter().cloned());
                return absolute(modules, from, &via, depth + 1);
            } else {
                // Another crate, a type's associated item (`Self::`, `Vec::new`), a variant.
                return None;
            }
        }
    };
    while let Some(next) = rest.first() {
        let Some(m) = modules.get(&at) else { break };
        if !m.children.contains(next) {
            break;
        }
        at.push(next.clone());
        rest = &rest[1..];
    }
    Some((at, rest.to_vec()))
}

fn name(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        format!("crate::{}", m.join("::"))
    }
}

/// Every strongly connected set of two or more modules, each shown as one cycle through it.
fn cycles(modules: &BTreeMap<ModPath, Module>) -> Vec<Cycle> {
    let edges = edges(modules);
    let nodes: Vec<&ModPath> = edges.keys().collect();
    let index: BTreeMap<&ModPath, usize> = nodes.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let adj: Vec<Vec<usize>> = nodes
        .iter()
        .map(|m| {
            edges[*m]
                .keys()
                .filter_map(|t| index.get(t).copied())
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    for component in strongly_connected(&adj) {
        if component.len() < 2 {
            continue;
        }
        let members: BTreeSet<usize> = component.iter().copied().collect();
        let start = *members.iter().next().unwrap_or(&0);
        let path = cycle_through(&adj, &members, start);
        let steps = path
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let next = path[(i + 1) % path.len()];
                let by = edges[nodes[n]]
                    .get(nodes[next])
                    .cloned()
                    .unwrap_or_default();
                (name(nodes[n]), by)
            })
            .collect();
        let members = members.iter().map(|&n| name(nodes[n])).collect();
        out.push(Cycle { steps, members });
    }
    out
}

/// A shortest cycle from `start` back to itself inside `members` (breadth first).
fn cycle_through(adj: &[Vec<usize>], members: &BTreeSet<usize>, start: usize) -> Vec<usize> {
    let mut parent: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for &next in &adj[n] {
            if !members.contains(&next) {
                continue;
            }
            if next == start {
                let mut path = vec![n];
                let mut at = n;
                while at != start {
                    at = parent[&at];
                    path.push(at);
                }
                path.reverse();
                return path;
            }
            if let std::collections::btree_map::Entry::Vacant(e) = parent.entry(next) {
                e.insert(n);
                queue.push_back(next);
            }
        }
    }
    vec![start]
}

/// Tarjan's strongly connected components.
fn strongly_connected(adj: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        adj: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for i in 0..s.adj[v].len() {
            let w = s.adj[v][i];
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let n = adj.len();
    let mut s = State {
        adj,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(files: &[(&str, &str)]) -> Vec<String> {
        text_cycles(files).iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn an_inline_crate_path_back_is_a_cycle() {
        // What a check of `use crate::` lines alone missed.
        let c = found(&[
            ("", "mod a; mod b;"),
            ("a", "use crate::b::Thing; pub struct A;"),
            ("b", "pub struct Thing; fn f() { let _ = crate::a::A; }"),
        ]);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(
            c[0].contains("crate::a") && c[0].contains("crate::b"),
            "{c:?}"
        );
    }

    #[test]
    fn super_self_strings_and_bindings_count() {
        let c = found(&[
            ("", "mod p;"),
            ("p", "mod x; mod y; pub fn helper() {}"),
            ("p::x", "use super::y; fn f() { y::g(); }"),
            (
                "p::y",
                "#[serde(serialize_with = \"crate::p::x::ser\")] pub struct S; pub fn g() {}",
            ),
        ]);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(c[0].contains("crate::p::x::ser"), "{c:?}");
    }

    #[test]
    fn three_modules_in_a_ring() {
        let c = found(&[
            ("", "mod a; mod b; mod c;"),
            ("a", "use crate::b::B; pub struct A;"),
            ("b", "use crate::c::{C, other::*}; pub struct B;"),
            ("c", "pub struct C; pub fn f() -> crate::a::A { todo!() }"),
        ]);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(
            text_cycles(&[
                ("", "mod a; mod b; mod c;"),
                ("a", "use crate::b::B; pub struct A;"),
                ("b", "use crate::c::C; pub struct B;"),
                ("c", "pub struct C; pub fn f() -> crate::a::A { todo!() }"),
            ])[0]
                .steps
                .len(),
            3
        );
    }

    #[test]
    fn re_exports_lead_to_the_defining_module() {
        // lib.rs re-exports and everyone names items through it: no cycle.
        let c = found(&[
            ("", "mod a; mod b; pub use a::A; pub use b::*;"),
            ("a", "use crate::B; pub struct A;"),
            ("b", "pub struct B;"),
        ]);
        assert!(c.is_empty(), "{c:?}");
        // But code in lib.rs that a module names, while lib.rs names the module, is one.
        let c = found(&[
            ("", "mod a; pub fn root_fn() -> a::A { a::A }"),
            ("a", "pub struct A; fn f() { crate::root_fn(); }"),
        ]);
        assert_eq!(c.len(), 1, "{c:?}");
    }

    #[test]
    fn comments_messages_and_other_crates_are_not_dependencies() {
        let c = found(&[
            ("", "mod a; mod b;"),
            ("a", "use crate::b::B; pub struct A;"),
            (
                "b",
                "// crate::a::A\n/// see [`crate::a::A`]\npub struct B; const M: &str = \"use crate::a::A\"; fn f() { std::mem::drop(1); }",
            ),
        ]);
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn a_test_module_is_its_own_module() {
        // `a`'s tests name `b`, which names `a`: no cycle, since `a` itself does not name `b`.
        let c = found(&[
            ("", "mod a; mod b;"),
            (
                "a",
                "pub struct A; #[cfg(test)] mod tests { use super::*; fn t() { let _ = crate::b::B; } }",
            ),
            ("b", "use crate::a::A; pub struct B;"),
        ]);
        assert!(c.is_empty(), "{c:?}");
    }

    #[test]
    fn naming_a_module_alone_binds_and_an_item_through_it_depends() {
        let c = found(&[
            ("", "mod a; mod b;"),
            ("a", "use crate::b; pub struct A; fn f() { b::g(); }"),
            ("b", "pub fn g() {} fn h() -> crate::a::A { crate::a::A }"),
        ]);
        assert_eq!(c.len(), 1, "{c:?}");
        let c = found(&[
            ("", "mod a; mod b;"),
            ("a", "use crate::b; pub struct A;"),
            ("b", "pub fn g() {} fn h() -> crate::a::A { crate::a::A }"),
        ]);
        assert!(c.is_empty(), "{c:?}");
    }
}
