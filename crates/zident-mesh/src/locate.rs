//! Finding the line of an entry in the YAML text, for rules the parser cannot check (two
//! workloads with one address, a name that breaks Kubernetes' rules): the parser has
//! forgotten where values came from by then, so the line is found again in the text.
//!
//! It understands block style, the way mesh files are written (`key:` lines, `- ` list items,
//! nesting by indentation). Where an entry is written in flow style (`[a, b]`, `{k: v}`) it
//! gives the line of the nearest enclosing key it could find, which is still the right place
//! to look.

/// One step of a path into the document: a key of a mapping, or an item of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// `key:`
    Key(&'a str),
    /// The n-th `- ` item, from 0.
    Item(usize),
}

/// A line of the document, seen as the key (or scalar) it starts and where.
struct Line<'a> {
    /// 1-based line number.
    number: usize,
    /// Column of the `- ` that starts a list item on this line, if one does.
    dash: Option<usize>,
    /// Column of the text after any `- `.
    indent: usize,
    /// The text after any `- `.
    text: &'a str,
}

fn lines(yaml: &str) -> Vec<Line<'_>> {
    yaml.lines()
        .enumerate()
        .filter_map(|(i, raw)| {
            let indent = raw.len() - raw.trim_start().len();
            let text = raw.trim();
            if text.is_empty() || text.starts_with('#') || text == "---" || text == "..." {
                return None;
            }
            let (dash, indent, text) = match text.strip_prefix('-') {
                Some(rest) if rest.is_empty() || rest.starts_with(' ') => {
                    let inner = rest.trim_start();
                    (Some(indent), raw.len() - inner.len(), inner)
                }
                _ => (None, indent, text),
            };
            Some(Line {
                number: i + 1,
                dash,
                indent,
                text,
            })
        })
        .collect()
}

fn is_key(text: &str, key: &str) -> bool {
    let text = text.trim_start_matches(['"', '\'']);
    text.strip_prefix(key).is_some_and(|rest| {
        let rest = rest.trim_start_matches(['"', '\'']);
        rest.starts_with(':')
    })
}

/// The line where `path` is written, or the deepest part of it that could be found; `None`
/// when not even its first step is in the text.
pub fn line_of(yaml: &str, path: &[Step<'_>]) -> Option<usize> {
    let all = lines(yaml);
    // The lines of the value being looked into, and the line that named it.
    let (mut from, mut to) = (0, all.len());
    let mut found = None;
    for step in path {
        let range = &all[from..to];
        match *step {
            Step::Key(key) => {
                let Some(min) = range.iter().map(|l| l.indent).min() else {
                    break;
                };
                let Some(at) = range
                    .iter()
                    .position(|l| l.indent == min && is_key(l.text, key))
                else {
                    break;
                };
                let line = &range[at];
                found = Some(line.number);
                // The value: the following lines indented deeper than the key, or list items
                // at the key's own indentation (YAML allows `key:\n- item`).
                // (An item's text starts two columns right of its dash, so both count.)
                let end = range[at + 1..]
                    .iter()
                    .position(|l| l.indent <= line.indent)
                    .map_or(range.len(), |p| at + 1 + p);
                (from, to) = (from + at + 1, from + end);
            }
            Step::Item(n) => {
                let Some(col) = range.iter().filter_map(|l| l.dash).min() else {
                    break;
                };
                let starts: Vec<usize> = range
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.dash == Some(col))
                    .map(|(i, _)| i)
                    .collect();
                let Some(&start) = starts.get(n) else { break };
                let end = starts.get(n + 1).copied().unwrap_or(range.len());
                found = Some(range[start].number);
                // The item's own first line holds its first key, so it stays in the range,
                // seen without its dash.
                (from, to) = (from + start, from + end);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use Step::{Item, Key};

    const YAML: &str = "\
# a comment
trustDomain: cluster.local
nodes:
- name: a
  token: t
workloads:
- uid: one
  name: first
  workloadIps: [\"127.0.0.2\"]

- uid: two
  name: second
  workloadIps:
  - 127.0.0.3
  - 127.0.0.4
  services:
    \"default/x\": {80: 8080}
policies:
  - name: p
    rules:
    - - - sourceIps: [10.0.0.0/33]
";

    #[test]
    fn finds_keys_items_and_nested_values() {
        assert_eq!(line_of(YAML, &[Key("trustDomain")]), Some(2));
        assert_eq!(line_of(YAML, &[Key("nodes"), Item(0)]), Some(4));
        assert_eq!(
            line_of(YAML, &[Key("nodes"), Item(0), Key("token")]),
            Some(5)
        );
        assert_eq!(line_of(YAML, &[Key("workloads"), Item(1)]), Some(11));
        assert_eq!(
            line_of(YAML, &[Key("workloads"), Item(1), Key("name")]),
            Some(12)
        );
        assert_eq!(
            line_of(
                YAML,
                &[Key("workloads"), Item(1), Key("workloadIps"), Item(1)]
            ),
            Some(15)
        );
        // Flow style: the key's line.
        assert_eq!(
            line_of(
                YAML,
                &[Key("workloads"), Item(0), Key("workloadIps"), Item(0)]
            ),
            Some(9)
        );
        assert_eq!(
            line_of(YAML, &[Key("policies"), Item(0), Key("name")]),
            Some(19)
        );
        assert_eq!(
            line_of(YAML, &[Key("policies"), Item(0), Key("rules")]),
            Some(20)
        );
        // A key of the first item is not found in the second.
        assert_eq!(
            line_of(YAML, &[Key("workloads"), Item(0), Key("services")]),
            Some(7)
        );
        assert_eq!(line_of(YAML, &[Key("services")]), None);
    }
}
