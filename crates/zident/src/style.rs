//! Terminal output: colour only when stdout is a terminal, and table alignment that ignores
//! the escape codes.

use std::io::IsTerminal;

/// Colours for one run of a command.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    colour: bool,
}

impl Style {
    /// Colour if stdout is a terminal (and `NO_COLOR` is not set).
    pub fn detect() -> Self {
        Self {
            colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// Good news.
    pub fn green(&self, t: &str) -> String {
        self.paint("32", t)
    }
    /// Needs attention.
    pub fn yellow(&self, t: &str) -> String {
        self.paint("33", t)
    }
    /// Broken.
    pub fn red(&self, t: &str) -> String {
        self.paint("31", t)
    }
    /// Secondary.
    pub fn dim(&self, t: &str) -> String {
        self.paint("2", t)
    }
    /// Headings.
    pub fn bold(&self, t: &str) -> String {
        self.paint("1", t)
    }
}

/// Prints rows as aligned columns; cells may contain colour codes.
pub fn print_table(rows: &[Vec<String>]) {
    let visible = |s: &str| strip_ansi(s).chars().count();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| visible(s))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                line.push_str(&" ".repeat(widths[c] - visible(cell) + 2));
            }
        }
        println!("{}", line.trim_end());
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_escape = false;
    for ch in s.chars() {
        match (in_escape, ch) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, c) => out.push(c),
        }
    }
    out
}
