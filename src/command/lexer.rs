//! Splits a chat line into words: spaces separate, double quotes group
//! (`"two words"`), a backslash escapes `"` or `\` inside quotes. The Vault
//! CLI's single-dash long flags (`-version=2`, `-wrap-ttl=5m`) become clap's
//! `--version=2`, so operators type what they would type after `vault`.

/// Why a line could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LexError {
    #[error("unterminated double quote")]
    UnterminatedQuote,
    #[error("line too long ({0} bytes, at most {MAX_LINE_BYTES})")]
    TooLong(usize),
    #[error("too many words (at most {MAX_WORDS})")]
    TooManyWords,
}

/// Telegram messages are at most 4096 characters; anything longer did not
/// come from a person.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
pub const MAX_WORDS: usize = 256;

pub fn split(line: &str) -> Result<Vec<String>, LexError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(LexError::TooLong(line.len()));
    }
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' => quoted = false,
                '\\' => match chars.next() {
                    Some(n @ ('"' | '\\')) => cur.push(n),
                    Some(n) => {
                        cur.push('\\');
                        cur.push(n);
                    }
                    None => return Err(LexError::UnterminatedQuote),
                },
                _ => cur.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                quoted = true;
                in_word = true;
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                    if words.len() > MAX_WORDS {
                        return Err(LexError::TooManyWords);
                    }
                }
            }
            _ => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(LexError::UnterminatedQuote);
    }
    if in_word {
        words.push(cur);
    }
    if words.len() > MAX_WORDS {
        return Err(LexError::TooManyWords);
    }
    Ok(words)
}

/// `-name` / `-name=value` (two or more letters) → `--name…`, as the Vault
/// CLI accepts single-dash long flags. `k=v` pairs and paths are untouched.
pub fn vault_style_flag(word: String) -> String {
    // The name: after one `-`, up to `=`; it starts with a letter (so
    // `--x` and `-5` stay as they are).
    let name = word.strip_prefix('-').and_then(|w| w.split('=').next());
    let is_long = name.is_some_and(|n| {
        n.len() >= 2
            && n.as_bytes()[0].is_ascii_lowercase()
            && n.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
    });
    if is_long {
        format!("-{word}")
    } else {
        word
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_groups() {
        assert_eq!(
            split("/kv put a/b k=v").unwrap(),
            ["/kv", "put", "a/b", "k=v"]
        );
        assert_eq!(
            split("  x   \"two words\" y ").unwrap(),
            ["x", "two words", "y"]
        );
        assert_eq!(split(r#"k="a \"q\" b""#).unwrap(), [r#"k=a "q" b"#]);
        assert_eq!(split(r#""""#).unwrap(), [""]);
        assert_eq!(split("\"x").unwrap_err(), LexError::UnterminatedQuote);
    }

    #[test]
    fn a_line_may_hold_16_kib() {
        // The figure itself, not the constant: the documented bound
        // (Telegram's 4096 characters fit, a paste of a key file too) must
        // not change unnoticed.
        let at = 16_384;
        assert!(split(&"a".repeat(at)).is_ok());
        assert_eq!(
            split(&"a".repeat(at + 1)).unwrap_err(),
            LexError::TooLong(at + 1)
        );
    }

    #[test]
    fn a_line_may_hold_256_words() {
        // Counted while splitting (a space after the last word) and at the
        // end (none): 256 pass, 257 do not, either way.
        for tail in [" ", ""] {
            let line = |n: usize| format!("{}a{tail}", "a ".repeat(n - 1));
            assert_eq!(split(&line(256)).unwrap().len(), 256, "{tail:?}");
            assert_eq!(split(&line(257)).unwrap_err(), LexError::TooManyWords);
        }
    }

    #[test]
    fn vault_flags_become_long_flags() {
        assert_eq!(vault_style_flag("-version=2".into()), "--version=2");
        assert_eq!(vault_style_flag("-wrap-ttl=5m".into()), "--wrap-ttl=5m");
        assert_eq!(vault_style_flag("--reveal".into()), "--reveal");
        assert_eq!(vault_style_flag("-x".into()), "-x");
        assert_eq!(vault_style_flag("-x=1".into()), "-x=1");
        assert_eq!(vault_style_flag("-ab".into()), "--ab");
        assert_eq!(vault_style_flag("-".into()), "-");
        assert_eq!(vault_style_flag("-Ab".into()), "-Ab");
        assert_eq!(vault_style_flag("-a_b".into()), "-a_b");
        assert_eq!(vault_style_flag("a=-b".into()), "a=-b");
        assert_eq!(vault_style_flag("-5".into()), "-5");
    }
}
