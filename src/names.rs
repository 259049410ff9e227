//! The name grammar shared by the config (operator names, ids) and the
//! records (agent ids, panel names). A leaf: imports nothing of the crate.

/// `[a-z0-9][a-z0-9_-]{0,62}` (plus `.` inside when `dots`): agent ids and
/// panel names, KV path segments that cannot be `.` or `..`.
pub fn is_name(s: &str, dots: bool) -> bool {
    let b = s.as_bytes();
    let first = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 63
        && first(b[0])
        && b[1..]
            .iter()
            .all(|&c| first(c) || c == b'_' || c == b'-' || (dots && c == b'.'))
}

#[cfg(test)]
mod tests {
    use super::is_name;

    #[test]
    fn grammar() {
        assert!(is_name("de1", false));
        assert!(is_name("a-b_c", false));
        assert!(!is_name("", false));
        assert!(!is_name("-a", false));
        assert!(!is_name("A", false));
        assert!(!is_name("a.b", false));
        assert!(is_name("a.b", true));
        assert!(!is_name(".", true));
        assert!(!is_name(&"a".repeat(64), false));
    }
}
