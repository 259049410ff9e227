//! Random ids and hex: approval ids, request ids, `random_id`s, leader
//! tags. A leaf: imports nothing of the crate. The OS random source
//! failing is an error the caller sees — never an all-zero id.

use zeroize::Zeroizing;

/// The OS random number generator failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the OS random number generator failed")]
pub struct RandomError;

/// `N` bytes from the OS, wiped on drop (they may become a secret).
pub fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, RandomError> {
    let mut b = Zeroizing::new([0u8; N]);
    getrandom::fill(&mut b[..]).map_err(|_| RandomError)?;
    Ok(b)
}

/// `N` random bytes as lowercase hex (`2N` characters): an id.
pub fn random_hex<const N: usize>() -> Result<String, RandomError> {
    Ok(hex(&random::<N>()?[..]))
}

/// A random `u64` (Telegram's `random_id` is one).
pub fn random_u64() -> Result<u64, RandomError> {
    Ok(u64::from_le_bytes(*random::<8>()?))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        let a = random_hex::<16>().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, random_hex::<16>().unwrap());
        assert_ne!(random_u64().unwrap(), random_u64().unwrap());
    }
}
