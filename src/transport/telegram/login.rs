//! The interactive sign-in dialogue, independent of the client library so
//! that its retries are unit-tested: a wrong code or a wrong 2FA password
//! is asked for again with the same login token (requesting a new code for
//! each attempt runs into Telegram's flood limits), and the person is told
//! which of the two was refused.

use std::future::Future;

use secrecy::ExposeSecret;

use super::chat::{ChatError, LoginPrompt};

/// Attempts per login code and per 2FA password before giving up.
pub const MAX_TRIES: usize = 3;
/// New codes that may be requested (an empty answer) in one login.
pub const MAX_NEW_CODES: usize = 2;

/// Result of `auth.signIn`.
pub enum SignIn<P> {
    Done,
    /// 2FA is on: the password token.
    Password(P),
    /// grammers maps every `PHONE_CODE_*` error (invalid, expired, empty)
    /// to one `InvalidCode`.
    InvalidCode,
    Failed(ChatError),
}

/// Result of the 2FA check.
pub enum Check<P> {
    Done,
    /// `PASSWORD_HASH_INVALID`, with a fresh token for the next attempt.
    Invalid(P),
    Failed(ChatError),
}

/// The calls a sign-in needs; grammers implements them in `grammers.rs`.
pub trait LoginSteps {
    type Token;
    type Password;
    fn request_code(&mut self, phone: &str)
        -> impl Future<Output = Result<Self::Token, ChatError>>;
    fn sign_in(
        &mut self,
        token: &Self::Token,
        code: &str,
    ) -> impl Future<Output = SignIn<Self::Password>>;
    fn hint(password: &Self::Password) -> Option<String>;
    fn check_password(
        &mut self,
        token: Self::Password,
        password: &[u8],
    ) -> impl Future<Output = Check<Self::Password>>;
}

pub async fn sign_in<S: LoginSteps>(
    steps: &mut S,
    prompt: &mut dyn LoginPrompt,
) -> Result<(), ChatError> {
    let phone = prompt.phone()?;
    let phone = phone.trim().to_string();
    let mut token = steps.request_code(&phone).await?;
    let mut wrong = 0;
    let mut new_codes = 0;
    let password = loop {
        let code = prompt.code()?;
        let code = code.expose_secret().trim();
        if code.is_empty() {
            if new_codes >= MAX_NEW_CODES {
                return Err(ChatError::Unauthorized(format!(
                    "{MAX_NEW_CODES} new codes requested; wait before trying again"
                )));
            }
            new_codes += 1;
            token = steps.request_code(&phone).await?;
            prompt.notice("a new code was sent");
            continue;
        }
        match steps.sign_in(&token, code).await {
            SignIn::Done => return Ok(()),
            SignIn::Password(p) => break p,
            SignIn::InvalidCode => {
                wrong += 1;
                if wrong >= MAX_TRIES {
                    return Err(ChatError::Unauthorized(format!(
                        "the login code was refused {MAX_TRIES} times"
                    )));
                }
                prompt.notice(
                    "the login code was refused (wrong or expired: PHONE_CODE_INVALID/PHONE_CODE_EXPIRED); \
                     type it again, or press Enter for a new code",
                );
            }
            SignIn::Failed(e) => return Err(e),
        }
    };
    let mut token = password;
    for attempt in 1..=MAX_TRIES {
        let password = prompt.password(S::hint(&token).as_deref())?;
        match steps
            .check_password(token, password.expose_secret().as_bytes())
            .await
        {
            Check::Done => return Ok(()),
            Check::Invalid(next) if attempt < MAX_TRIES => {
                prompt
                    .notice("the 2FA password was refused (PASSWORD_HASH_INVALID); type it again");
                token = next;
            }
            Check::Invalid(_) => break,
            Check::Failed(e) => return Err(e),
        }
    }
    Err(ChatError::Unauthorized(format!(
        "the 2FA password was refused {MAX_TRIES} times"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use std::collections::VecDeque;

    /// Telegram as grammers reports it: a code is valid for the token it
    /// was sent with; a password check hands out a new token each time.
    #[derive(Default)]
    struct Steps {
        codes_sent: u32,
        code: String,
        password: String,
        calls: Vec<String>,
    }

    impl LoginSteps for Steps {
        type Token = u32;
        type Password = u32;
        async fn request_code(&mut self, phone: &str) -> Result<u32, ChatError> {
            self.calls.push(format!("request_code {phone}"));
            self.codes_sent += 1;
            Ok(self.codes_sent)
        }
        async fn sign_in(&mut self, token: &u32, code: &str) -> SignIn<u32> {
            self.calls.push(format!("sign_in {token} {code}"));
            if *token == self.codes_sent && code == self.code {
                if self.password.is_empty() {
                    SignIn::Done
                } else {
                    SignIn::Password(100)
                }
            } else {
                SignIn::InvalidCode
            }
        }
        fn hint(_: &u32) -> Option<String> {
            Some("hint".into())
        }
        async fn check_password(&mut self, token: u32, password: &[u8]) -> Check<u32> {
            self.calls.push(format!("check {token}"));
            if password == self.password.as_bytes() {
                Check::Done
            } else {
                Check::Invalid(token + 1)
            }
        }
    }

    struct Script {
        codes: VecDeque<&'static str>,
        passwords: VecDeque<&'static str>,
        notices: Vec<String>,
    }

    impl LoginPrompt for Script {
        fn phone(&mut self) -> Result<String, ChatError> {
            Ok(" +4912345 ".into())
        }
        fn code(&mut self) -> Result<SecretString, ChatError> {
            let c = self
                .codes
                .pop_front()
                .ok_or(ChatError::Prompt("eof".into()))?;
            Ok(SecretString::from(c.to_string()))
        }
        fn password(&mut self, hint: Option<&str>) -> Result<SecretString, ChatError> {
            assert_eq!(hint, Some("hint"));
            let p = self
                .passwords
                .pop_front()
                .ok_or(ChatError::Prompt("eof".into()))?;
            Ok(SecretString::from(p.to_string()))
        }
        fn notice(&mut self, text: &str) {
            self.notices.push(text.into());
        }
    }

    fn script(codes: &[&'static str], passwords: &[&'static str]) -> Script {
        Script {
            codes: codes.iter().copied().collect(),
            passwords: passwords.iter().copied().collect(),
            notices: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_wrong_code_is_asked_again_with_the_same_token() {
        let mut s = Steps {
            code: "12345".into(),
            ..Default::default()
        };
        let mut p = script(&["11111", " 12345 "], &[]);
        sign_in(&mut s, &mut p).await.unwrap();
        assert_eq!(s.codes_sent, 1, "one code only: {:?}", s.calls);
        assert_eq!(s.calls[0], "request_code +4912345", "phone trimmed");
        assert!(
            p.notices[0].contains("login code was refused"),
            "{:?}",
            p.notices
        );
    }

    #[tokio::test]
    async fn an_empty_answer_requests_a_new_code_and_the_tries_are_bounded() {
        let mut s = Steps {
            code: "777".into(),
            ..Default::default()
        };
        let mut p = script(&["", "777"], &[]);
        sign_in(&mut s, &mut p).await.unwrap();
        assert_eq!(s.codes_sent, 2);
        let mut s = Steps {
            code: "777".into(),
            ..Default::default()
        };
        let mut p = script(&["1", "2", "3", "777"], &[]);
        let e = sign_in(&mut s, &mut p).await.unwrap_err();
        assert!(e.to_string().contains("refused 3 times"), "{e}");
        assert_eq!(p.codes.len(), 1, "stopped after 3 wrong codes");
    }

    #[tokio::test]
    async fn a_wrong_2fa_password_is_asked_again_with_the_new_token() {
        let mut s = Steps {
            code: "1".into(),
            password: "pw".into(),
            ..Default::default()
        };
        let mut p = script(&["1"], &["nope", "pw"]);
        sign_in(&mut s, &mut p).await.unwrap();
        assert_eq!(s.calls.last().unwrap(), "check 101", "{:?}", s.calls);
        assert!(p.notices[0].contains("2FA password was refused"));
        let mut s = Steps {
            code: "1".into(),
            password: "pw".into(),
            ..Default::default()
        };
        let mut p = script(&["1"], &["a", "b", "c", "pw"]);
        let e = sign_in(&mut s, &mut p).await.unwrap_err();
        assert!(
            e.to_string().contains("2FA password was refused 3 times"),
            "{e}"
        );
        assert_eq!(s.codes_sent, 1);
    }
}
