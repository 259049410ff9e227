//! TOTP validation (`vault write totp/code/NAME code=…`): an approving
//! admin's code is checked by Vault's TOTP engine. The broker only ever
//! *validates*: reading `totp/code/NAME` would generate a code for keys made
//! with `generate=true`, so the broker's policy grants `update` only.

use rustify::enums::RequestMethod;
use serde::{Deserialize, Serialize};

use super::client::Vault;
use super::error::{Says, VaultError};
use super::http::{check_mount, check_name, parse_data, Req};

/// The Vault TOTP mount that checks approval codes (`apply.sh` enables it).
pub const MOUNT: &str = "totp";

#[derive(Serialize)]
struct CodeBody<'a> {
    code: &'a str,
}

#[derive(Deserialize)]
struct RawValid {
    valid: bool,
}

/// 6 to 8 ASCII digits (Vault's `digits` is 6 or 8). Checked before any
/// request so that chat noise never reaches Vault; the code is never
/// echoed in an error.
fn check_code(code: &str) -> Result<(), VaultError> {
    if (6..=8).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(VaultError::Input(
            "invalid TOTP code: expected 6 to 8 digits".into(),
        ))
    }
}

impl Vault {
    /// Whether `code` is the current (or, within Vault's skew, adjacent)
    /// code of TOTP key `key_name`. Errors: unknown key → NotFound; a code
    /// already used in its period → Denied (Vault refuses replays); a code
    /// of the wrong length for the key → Invalid.
    pub async fn totp_validate(
        &self,
        mount: &str,
        key_name: &str,
        code: &str,
    ) -> Result<bool, VaultError> {
        let mount = check_mount(mount)?;
        check_name("TOTP key name", key_name)?;
        check_code(code)?;
        let ctx = format!("TOTP key {mount}/{key_name}");
        let req = Req::new(RequestMethod::POST, format!("{mount}/code/{key_name}"))
            .json(&CodeBody { code })?;
        match self.send(req).await {
            Ok(body) => Ok(parse_data::<RawValid>(&body, &ctx)?.valid),
            // OpenBao answers 400 for both; neither is a malformed request.
            Err(e) => Err(e
                .into_error(&ctx)
                .recast(Says::UnknownTotpKey, VaultError::NotFound)
                .recast(Says::TotpCodeUsed, VaultError::Denied)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_format() {
        for ok in ["123456", "0000000", "12345678"] {
            check_code(ok).unwrap();
        }
        for bad in [
            "",
            "12345",
            "123456789",
            "12345a",
            " 123456",
            "１２３４５６",
            "123 456",
        ] {
            let e = check_code(bad).unwrap_err();
            assert_eq!(e.kind(), crate::error::ErrorKind::Invalid);
            assert!(!e.to_string().contains(bad) || bad.is_empty());
        }
    }
}
