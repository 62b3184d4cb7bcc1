//! Rust source as the few tokens a module graph needs: identifiers, `::`, the punctuation that
//! delimits items and `use` trees, and the text of plain string literals (attributes such as
//! `serialize_with = "crate::…"` name paths in strings). Comments, character literals,
//! lifetimes, numbers and raw or byte strings are skipped, so a path in a comment or in a
//! message is never read as a dependency.

/// One token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// An identifier or keyword (`r#` prefix removed).
    Ident(String),
    /// `::`
    PathSep,
    /// Any other punctuation character that matters: `{ } ; , * #` and the rest as themselves.
    Punct(char),
    /// The contents of a plain `"…"` string literal, escapes left as written.
    Str(String),
}

/// Splits `src` into tokens.
pub fn tokens(src: &str) -> Vec<Token> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // Block comments nest in Rust.
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'"' => {
                let (text, end) = plain_string(b, i + 1);
                out.push(Token::Str(text));
                i = end;
            }
            b'\'' => i = quote(b, i),
            b'r' | b'b' | b'c' if starts_special_string(b, i) => i = special_string(b, i),
            b':' if b.get(i + 1) == Some(&b':') => {
                out.push(Token::PathSep);
                i += 2;
            }
            c if c == b'_' || c.is_ascii_alphabetic() || c >= 0x80 => {
                let start = i;
                while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric() || b[i] >= 0x80)
                {
                    i += 1;
                }
                let mut word = &src[start..i];
                if word == "r" && b.get(i) == Some(&b'#') {
                    // A raw identifier, r#type.
                    let s = i + 1;
                    i = s;
                    while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
                        i += 1;
                    }
                    word = &src[s..i];
                }
                out.push(Token::Ident(word.to_owned()));
            }
            c if c.is_ascii_digit() => {
                while i < b.len() && (b[i] == b'_' || b[i].is_ascii_alphanumeric()) {
                    i += 1;
                }
            }
            c if c.is_ascii_whitespace() => i += 1,
            c => {
                out.push(Token::Punct(c as char));
                i += 1;
            }
        }
    }
    out
}

/// Reads a `"…"` body from `i` (after the quote); returns its text and the index past the
/// closing quote.
fn plain_string(b: &[u8], mut i: usize) -> (String, usize) {
    let start = i;
    while i < b.len() && b[i] != b'"' {
        if b[i] == b'\\' {
            i += 1;
        }
        i += 1;
    }
    let end = i.min(b.len());
    (
        String::from_utf8_lossy(&b[start..end]).into_owned(),
        end + 1,
    )
}

/// A `'` starts a character literal (`'a'`, `'\n'`, `'\u{1F600}'`) or a lifetime (`'a`);
/// returns the index past either.
fn quote(b: &[u8], i: usize) -> usize {
    if b.get(i + 1) == Some(&b'\\') {
        let mut j = i + 2;
        while j < b.len() && b[j] != b'\'' {
            j += 1;
        }
        return j + 1;
    }
    // One character (of up to four UTF-8 bytes) then a quote: a character literal.
    for len in 1..=4 {
        if b.get(i + 1 + len) == Some(&b'\'') {
            return i + 2 + len;
        }
    }
    // A lifetime: the quote and the identifier after it.
    let mut j = i + 1;
    while j < b.len() && (b[j] == b'_' || b[j].is_ascii_alphanumeric()) {
        j += 1;
    }
    j
}

/// `r"`, `r#"`, `b"`, `br"`, `br#"`, `b'`, `c"`, `cr"`…, not part of a longer identifier.
fn starts_special_string(b: &[u8], i: usize) -> bool {
    if i > 0 && (b[i - 1] == b'_' || b[i - 1].is_ascii_alphanumeric()) {
        return false;
    }
    let mut j = i;
    if b[j] == b'b' || b[j] == b'c' {
        j += 1;
        if b.get(j) == Some(&b'\'') && b[i] == b'b' {
            return true;
        }
    }
    if b.get(j) == Some(&b'r') {
        j += 1;
        while b.get(j) == Some(&b'#') {
            j += 1;
        }
    }
    j > i && b.get(j) == Some(&b'"')
}

/// Skips a raw, byte or C string (or a byte character) starting at `i`.
fn special_string(b: &[u8], mut i: usize) -> usize {
    if b[i] == b'b' || b[i] == b'c' {
        i += 1;
        if b[i] == b'\'' {
            return quote(b, i);
        }
    }
    let raw = b[i] == b'r';
    if !raw {
        return plain_string(b, i + 1).1;
    }
    i += 1;
    let mut hashes = 0;
    while b.get(i) == Some(&b'#') {
        hashes += 1;
        i += 1;
    }
    i += 1; // the opening quote
    while i < b.len() {
        if b[i] == b'"'
            && b[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&h| h == b'#')
                .count()
                == hashes
        {
            return i + 1 + hashes;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idents(src: &str) -> Vec<String> {
        tokens(src)
            .into_iter()
            .filter_map(|t| match t {
                Token::Ident(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn comments_strings_and_characters_are_not_code() {
        let src = r##"
            // crate::alpha
            /* crate::beta /* nested crate::gamma */ still comment */
            let s = "crate::delta"; let r = r#"crate::epsilon "quoted""#; let c = '"';
            let l: &'a str; let bs = b"crate::zeta"; let bc = b'\''; x
        "##;
        let ids = idents(src);
        for hidden in ["alpha", "beta", "gamma", "epsilon", "zeta"] {
            assert!(
                !ids.contains(&hidden.to_owned()),
                "{hidden} leaked: {ids:?}"
            );
        }
        assert!(ids.contains(&"x".to_owned()), "{ids:?}");
        assert!(tokens(src).contains(&Token::Str("crate::delta".into())));
    }

    #[test]
    fn paths_and_raw_identifiers() {
        assert_eq!(
            tokens("crate::r#type::X"),
            vec![
                Token::Ident("crate".into()),
                Token::PathSep,
                Token::Ident("type".into()),
                Token::PathSep,
                Token::Ident("X".into()),
            ]
        );
    }
}
