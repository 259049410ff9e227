//! The escaper for text shown to a person: `escape_line`'s output never
//! contains a control, bidi-override, zero-width or other forbidden
//! character, nor a newline; `escape_text`'s none but newlines; text that
//! needs no escaping comes back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vaultgram::text::{escape_line, escape_text, find_forbidden, forbidden_char};

fuzz_target!(|s: String| {
    let line = escape_line(&s);
    assert!(find_forbidden(&line).is_none(), "{line:?}");
    assert!(!line.contains('\n'), "{line:?}");
    if !s.chars().any(|c| forbidden_char(c) || c == '\\' || (c.is_whitespace() && c != ' ')) {
        // Right-to-left letters are escaped too: only compare when none.
        if line.len() == s.len() {
            assert_eq!(line, s);
        }
    }
    let text = escape_text(&s);
    assert!(!text.chars().any(|c| c != '\n' && forbidden_char(c)), "{text:?}");
    if !s.chars().any(|c| c != '\n' && forbidden_char(c)) {
        assert_eq!(text, s, "escape_text changed text that needed nothing");
    }
});
