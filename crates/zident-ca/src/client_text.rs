//! What a client says, as it goes into the CA's log: cut short, so that a client cannot make
//! one request write kilobytes of log (a NACK's reason, a type URL, a metadata value, a header).

/// The most of a client's text that goes into a log line.
const CLIENT_TEXT: usize = 200;

/// `text` cut to [`CLIENT_TEXT`] bytes at a character boundary, saying how much was cut.
pub(crate) fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    if text.len() <= CLIENT_TEXT {
        return text.into();
    }
    let mut end = CLIENT_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &text[..end], text.len() - end).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_at_a_character_and_says_how_much() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(150); // 300 bytes, two per character
        let cut = clip(&long);
        assert!(cut.starts_with(&"é".repeat(100)), "{cut}");
        assert!(cut.ends_with("… (100 more bytes)"), "{cut}");
        let odd = format!("a{}", "é".repeat(150)); // the boundary falls inside a character
        assert!(clip(&odd).ends_with("… (102 more bytes)"), "{}", clip(&odd));
    }
}
