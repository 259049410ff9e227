//! Text shown to a person: which characters may not appear raw, and how
//! they are shown instead.
//!
//! Operator-supplied text reaches other people (`/pending`, `/audit`,
//! errors, `ctl`, Telegram). A raw CR, ESC, NEL, line separator or bidi
//! override there can make a terminal or chat show one command while
//! another runs. So: command arguments that no legitimate value needs them
//! in refuse them ([`forbidden_char`]), and everything rendered escapes
//! them visibly ([`escape_line`], [`escape_text`]).

use std::borrow::Cow;

/// Control characters (C0, DEL, C1 — NEL included) and the invisible
/// format characters that reorder or hide text: bidi embeddings, overrides
/// and isolates, zero-width characters, line/paragraph separators, the
/// Arabic letter mark, soft hyphen, BOM, interlinear annotations and tags.
pub fn forbidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}')
}

/// The first forbidden character of `s`, if any.
pub fn find_forbidden(s: &str) -> Option<char> {
    s.chars().find(|&c| forbidden_char(c))
}

fn escape_with(s: &str, keep_newlines: bool, escape_backslash: bool) -> Cow<'_, str> {
    let needs = |c: char| {
        (forbidden_char(c) && !(keep_newlines && c == '\n')) || (escape_backslash && c == '\\')
    };
    if !s.chars().any(needs) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !needs(c) {
            out.push(c);
            continue;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push_str(&format!("\\u{{{:04x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// One field on one line (`/pending`, `/audit`): every forbidden character,
/// newlines included, and the backslash itself are escaped, so the shown
/// text is unambiguous and cannot start a line of its own.
pub fn escape_line(s: &str) -> Cow<'_, str> {
    escape_with(s, false, true)
}

/// A whole reply or error: lines stay lines, every other forbidden
/// character is escaped (`\r`, `\u{1b}`, `\u{202e}`). Backslashes stay as
/// they are, so a secret value is shown as stored.
pub fn escape_text(s: &str) -> Cow<'_, str> {
    escape_with(s, true, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_deceives_and_keeps_the_rest() {
        assert_eq!(escape_line("secret/x"), "secret/x");
        assert!(matches!(escape_line("plain"), Cow::Borrowed(_)));
        assert_eq!(escape_line("a\rb"), "a\\rb");
        assert_eq!(escape_line("a\nb"), "a\\nb");
        assert_eq!(escape_line("a\\b"), "a\\\\b");
        assert_eq!(escape_line("\u{1b}[2K"), "\\u{001b}[2K");
        assert_eq!(escape_line("x\u{85}y"), "x\\u{0085}y");
        assert_eq!(escape_line("x\u{2028}y\u{2029}"), "x\\u{2028}y\\u{2029}");
        assert_eq!(escape_line("\u{202e}gpj.exe"), "\\u{202e}gpj.exe");
        assert_eq!(escape_line("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
        assert_eq!(escape_text("a\nb\rc"), "a\nb\\rc");
        assert_eq!(escape_text("C:\\x"), "C:\\x");
        assert_eq!(escape_line("héllo wörld ✓"), "héllo wörld ✓");
    }

    #[test]
    fn nothing_forbidden_survives() {
        for c in (0u32..0x110000).filter_map(char::from_u32) {
            let s = format!("a{c}b");
            let line = escape_line(&s);
            assert!(find_forbidden(&line).is_none(), "U+{:04X}", c as u32);
            let text = escape_text(&s);
            assert!(
                text.chars().all(|x| x == '\n' || !forbidden_char(x)),
                "U+{:04X}",
                c as u32
            );
        }
    }
}
