//! Bounding text that comes from outside (receivers' answers, error
//! messages) before it reaches a record, a log line, a header or a topic.

/// `text` if it fits in `max` bytes; otherwise its longest prefix of at most
/// `max` bytes ending on a char boundary, followed by
/// `…[truncated N bytes]` where N is the number of bytes dropped.
pub fn truncate_marked(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let dropped = text.len() - cut;
    text.truncate(cut);
    text.push_str(&format!("…[truncated {dropped} bytes]"));
    text
}

/// `text` on one line (control characters become spaces), bounded like
/// [`truncate_marked`]. Only the first `max` bytes of `text` are looked at,
/// so a huge input costs no more than a small one.
pub fn one_line(text: &str, max: usize) -> String {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut line: String = text[..cut]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cut < text.len() {
        line.push_str(&format!("…[truncated {} bytes]", text.len() - cut));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_as_is() {
        assert_eq!(truncate_marked("abc".into(), 3), "abc");
        assert_eq!(truncate_marked(String::new(), 0), "");
        assert_eq!(one_line("a\nb", 10), "a b");
    }

    #[test]
    fn long_text_is_cut_and_marked() {
        assert_eq!(
            truncate_marked("abcdef".into(), 4),
            "abcd…[truncated 2 bytes]"
        );
        assert_eq!(truncate_marked("abc".into(), 0), "…[truncated 3 bytes]");
        assert_eq!(one_line("ab\r\ncdef", 4), "ab  …[truncated 4 bytes]");
    }

    #[test]
    fn cut_never_splits_a_char() {
        // "é" is 2 bytes, "€" is 3: a cut at 4 would split the euro sign.
        assert_eq!(truncate_marked("aé€x".into(), 4), "aé…[truncated 4 bytes]");
        assert_eq!(one_line("aé€x", 4), "aé…[truncated 4 bytes]");
        let big = "\u{fffd}".repeat(400_000);
        let out = one_line(&big, 1024);
        assert!(out.len() <= 1024 + 32, "{}", out.len());
        for max in 0..10 {
            let out = truncate_marked("€€€".into(), max);
            assert!(out.starts_with(&"€".repeat(max.min(9) / 3)), "{max}: {out}");
        }
    }
}
