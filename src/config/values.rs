//! Value formats used by several keys: durations (`30s`, `5m`, `1h`) and
//! proxy URLs (resolved, redacted).

use std::time::Duration;

use url::Url;

/// What the redacted rendering shows in place of a secret.
pub(super) const REDACTED: &str = "<redacted>";

/// `30s`, `5m`, `1h`: digits followed by one unit, greater than zero.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let unit = match text.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        _ => return None,
    };
    let digits = &text[..text.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    if n == 0 {
        return None;
    }
    n.checked_mul(unit).map(Duration::from_secs)
}

/// `proxy` with its host replaced by `ip` (a name resolved by the client).
pub fn proxy_with_address(proxy: &str, ip: std::net::IpAddr) -> String {
    match Url::parse(proxy) {
        Ok(mut url) => {
            if url.set_ip_host(ip).is_err() {
                return proxy.to_string();
            }
            url.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => proxy.to_string(),
    }
}

/// Replace the password of a URL (`socks5://u:p@h`) by `<redacted>`.
pub(super) fn redact_url_password(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(url) if url.password().is_some() => {
            let user = url.username();
            let rest = &url[url::Position::BeforeHost..];
            format!("{}://{user}:{REDACTED}@{rest}", url.scheme())
        }
        Ok(_) => raw.to_string(),
        // Unparsable: it might still hold credentials, so show none of it
        // if it looks like it does.
        Err(_) if raw.contains('@') => REDACTED.to_string(),
        Err(_) => raw.to_string(),
    }
}
