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
/// characters that reorder or hide text: bidi embeddings, overrides and
/// isolates, line/paragraph separators, and every Unicode
/// `Default_Ignorable_Code_Point` (zero-width characters, the combining
/// grapheme joiner U+034F, soft hyphen, BOM, variation selectors such as
/// U+FE0F, the Hangul fillers U+115F, U+1160, U+3164, U+FFA0, the Khmer
/// and Mongolian invisibles, tags) — plus the Braille blank U+2800, which
/// renders as nothing although it is not ignorable. The ranges are
/// `DerivedCoreProperties.txt`'s (Unicode 16), which changes rarely.
pub fn forbidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}')
}

/// Characters that are harmless in a reply but change how a *one-line
/// field* reads when it sits among others (`/pending`, `/audit`,
/// approval notices): right-to-left letters reorder the neutral
/// characters around them (an approver would read another order than the
/// one that runs), and spaces other than U+0020 look like one but are not.
fn misleading_in_a_line(c: char) -> bool {
    use unicode_bidi::BidiClass;
    (c.is_whitespace() && c != ' ')
        || matches!(
            unicode_bidi::bidi_class(c),
            BidiClass::R | BidiClass::AL | BidiClass::RLE | BidiClass::RLO | BidiClass::RLI
        )
}

/// The first forbidden character of `s`, if any.
pub fn find_forbidden(s: &str) -> Option<char> {
    s.chars().find(|&c| forbidden_char(c))
}

fn escape_with(s: &str, keep_newlines: bool, one_line: bool) -> Cow<'_, str> {
    let needs = |c: char| {
        (forbidden_char(c) && !(keep_newlines && c == '\n'))
            || (one_line && (c == '\\' || misleading_in_a_line(c)))
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

/// One field on one line (`/pending`, `/audit`, notices): every forbidden
/// character, newlines included, right-to-left letters, spaces other than
/// U+0020 and the backslash itself are escaped, so the shown text is
/// unambiguous, reads in the order it runs and cannot start a line of its
/// own.
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
    fn invisible_blank_and_right_to_left_characters_are_escaped_in_lines() {
        // Found by an adversarial test: blank or invisible in /pending,
        // notices and /audit, and letters that reorder what is shown.
        for (c, shown) in [
            ('\u{3164}', "\\u{3164}"),
            ('\u{2800}', "\\u{2800}"),
            ('\u{034F}', "\\u{034f}"),
            ('\u{FE0F}', "\\u{fe0f}"),
            ('\u{115F}', "\\u{115f}"),
            ('\u{E0100}', "\\u{e0100}"),
        ] {
            assert!(forbidden_char(c), "U+{:04X}", c as u32);
            assert_eq!(escape_line(&format!("a{c}b")), format!("a{shown}b"));
            assert_eq!(escape_text(&format!("a{c}b")), format!("a{shown}b"));
        }
        // Hebrew and Arabic letters: escaped in a line, kept in a reply.
        assert_eq!(escape_line("x/\u{05D0}\u{0628}"), "x/\\u{05d0}\\u{0628}");
        assert_eq!(escape_text("x/\u{05D0}"), "x/\u{05D0}");
        assert_eq!(escape_line("a\u{00A0}b\u{3000}"), "a\\u{00a0}b\\u{3000}");
        assert_eq!(escape_line("a b"), "a b");
        assert_eq!(escape_line("héllo wörld ✓ 名前"), "héllo wörld ✓ 名前");
    }

    #[test]
    fn nothing_forbidden_survives() {
        for c in (0u32..0x110000).filter_map(char::from_u32) {
            let s = format!("a{c}b");
            let line = escape_line(&s);
            assert!(find_forbidden(&line).is_none(), "U+{:04X}", c as u32);
            assert!(
                !line.chars().any(misleading_in_a_line),
                "U+{:04X}",
                c as u32
            );
            let text = escape_text(&s);
            assert!(
                text.chars().all(|x| x == '\n' || !forbidden_char(x)),
                "U+{:04X}",
                c as u32
            );
        }
    }
}
