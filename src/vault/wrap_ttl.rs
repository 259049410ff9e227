//! The wrap TTL (`-wrap-ttl`) as operators write it, bounded.

use std::fmt;
use std::str::FromStr;

use super::error::VaultError;

/// How long a response-wrapping token lives: `30s`, `5m`, `1h`, `1h30m` or
/// plain seconds (`90`), as the Vault CLI's `-wrap-ttl` takes it. Bounded to
/// 1 s ..= 24 h: OpenBao itself accepts absurd TTLs (we saw 999999h), and a
/// wrapping token that outlives a working day is a standing secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WrapTtl(u64);

impl WrapTtl {
    pub const MIN_SECS: u64 = 1;
    pub const MAX_SECS: u64 = 24 * 3600;

    pub fn from_secs(secs: u64) -> Result<WrapTtl, WrapTtlError> {
        if (Self::MIN_SECS..=Self::MAX_SECS).contains(&secs) {
            Ok(WrapTtl(secs))
        } else {
            Err(WrapTtlError::OutOfRange)
        }
    }

    pub fn parse(s: &str) -> Result<WrapTtl, WrapTtlError> {
        if s.is_empty() || s.len() > 32 {
            return Err(WrapTtlError::Malformed);
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return Self::from_secs(s.parse().map_err(|_| WrapTtlError::OutOfRange)?);
        }
        let mut total: u64 = 0;
        let mut num: Option<u64> = None;
        for c in s.chars() {
            match c {
                '0'..='9' => {
                    let d = u64::from(c as u8 - b'0');
                    let n = num
                        .unwrap_or(0)
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(d));
                    num = Some(n.ok_or(WrapTtlError::OutOfRange)?);
                }
                's' | 'm' | 'h' => {
                    let n = num.take().ok_or(WrapTtlError::Malformed)?;
                    let unit = match c {
                        's' => 1,
                        'm' => 60,
                        _ => 3600,
                    };
                    total = n
                        .checked_mul(unit)
                        .and_then(|v| total.checked_add(v))
                        .ok_or(WrapTtlError::OutOfRange)?;
                }
                _ => return Err(WrapTtlError::Malformed),
            }
        }
        if num.is_some() {
            // "1h30": a number without a unit after a unit.
            return Err(WrapTtlError::Malformed);
        }
        Self::from_secs(total)
    }

    pub fn as_secs(self) -> u64 {
        self.0
    }
}

impl FromStr for WrapTtl {
    type Err = WrapTtlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WrapTtl::parse(s)
    }
}

impl fmt::Display for WrapTtl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0)
    }
}

/// Why a wrap TTL was refused. The input is not echoed (it is operator text
/// and may hold anything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WrapTtlError {
    #[error("invalid wrap TTL: expected a duration such as 30s, 5m, 1h or 1h30m")]
    Malformed,
    #[error("invalid wrap TTL: must be between 1s and 24h")]
    OutOfRange,
}

impl From<WrapTtlError> for VaultError {
    fn from(e: WrapTtlError) -> Self {
        VaultError::Input(e.to_string())
    }
}
