//! RFC 6238 TOTP (HMAC-SHA1, 30 s steps), computed independently of Vault
//! so tests can present valid (and invalid) approval codes.

/// RFC 4648 base32 without padding, as Vault's `totp/keys` takes a `key`.
pub fn base32(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0);
    for &b in bytes {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            out.push(A[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(A[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The code of `key` for time step `counter`, `digits` long.
pub fn totp(key: &[u8], counter: u64, digits: u32) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mac = ring::hmac::sign(&k, &counter.to_be_bytes());
    let h = mac.as_ref();
    let off = (h[19] & 0x0f) as usize;
    let bin = (u32::from(h[off] & 0x7f) << 24)
        | (u32::from(h[off + 1]) << 16)
        | (u32::from(h[off + 2]) << 8)
        | u32::from(h[off + 3]);
    format!(
        "{:0width$}",
        bin % 10u32.pow(digits),
        width = digits as usize
    )
}

/// The current 30-second step.
pub fn step_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30
}

/// A TOTP key in Vault, created with the root token; the test keeps the
/// seed to compute codes.
pub struct TotpKey {
    pub name: String,
    pub seed: [u8; 20],
}

/// Creates `totp/keys/<name>` (SHA1, 6 digits, 30 s) with a random seed.
pub fn create_totp_key(env: &super::Env, name: &str) -> TotpKey {
    let c = env.cluster();
    let mut seed = [0u8; 20];
    getrandom::fill(&mut seed).unwrap();
    let (code, body) = c
        .vault_api(
            reqwest::Method::POST,
            &format!("totp/keys/{name}"),
            Some(&c.root_token),
            Some(serde_json::json!({
                "generate": false, "key": base32(&seed), "issuer": "vaultgram-it",
                "account_name": name, "digits": 6, "period": 30, "algorithm": "SHA1"
            })),
        )
        .unwrap();
    assert!(
        code == 200 || code == 204,
        "create TOTP key {name}: {code} {body}"
    );
    TotpKey {
        name: name.to_string(),
        seed,
    }
}

/// A valid code of `key` that this run has not used yet (Vault refuses a
/// code twice): the current step, else the next one (Vault's default skew
/// accepts it), else wait for the next period.
pub fn fresh_code(key: &TotpKey) -> String {
    use std::collections::{HashMap, HashSet};
    use std::sync::{Mutex, OnceLock};
    static USED: OnceLock<Mutex<HashMap<String, HashSet<u64>>>> = OnceLock::new();
    let used = USED.get_or_init(Default::default);
    loop {
        let s = step_now();
        {
            let mut u = used.lock().unwrap();
            let set = u.entry(key.name.clone()).or_default();
            for step in [s, s + 1] {
                if set.insert(step) {
                    return totp(&key.seed, step, 6);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
}

/// A 6-digit code that no step near now produces.
pub fn wrong_code(key: &TotpKey) -> String {
    let s = step_now();
    let near: Vec<String> = (s - 3..=s + 3).map(|t| totp(&key.seed, t, 6)).collect();
    (0..1_000_000u32)
        .map(|n| format!("{n:06}"))
        .find(|w| !near.contains(w))
        .unwrap()
}

/// A copy of the harness config in which alice and dave approve with the
/// TOTP keys `<tag>-alice` / `<tag>-dave` (created in Vault with root), the
/// text passed through `edit`. Vault refuses a code twice, so each test
/// uses keys of its own.
pub struct Approvers {
    pub config: std::path::PathBuf,
    pub alice: TotpKey,
    pub dave: TotpKey,
}

pub fn approvers(env: &super::Env, tag: &str, edit: impl FnOnce(String) -> String) -> Approvers {
    let c = env.cluster();
    let alice = create_totp_key(env, &format!("{tag}-alice"));
    let dave = create_totp_key(env, &format!("{tag}-dave"));
    let mut text = std::fs::read_to_string(&c.config_path).unwrap();
    for (op, key) in [("alice", &alice), ("dave", &dave)] {
        let from = format!("name = \"{op}\"\n");
        assert!(text.contains(&from), "harness config lists {op}");
        text = text.replace(&from, &format!("{from}totp_key = \"{}\"\n", key.name));
    }
    let config = c.path().join(format!("vaultgram-{tag}.toml"));
    std::fs::write(&config, edit(text)).unwrap();
    Approvers {
        config,
        alice,
        dave,
    }
}

impl Approvers {
    /// `lines` through `vaultgram console --json` as `op`, one reply each.
    pub fn run(&self, env: &super::Env, op: &str, lines: &[&str]) -> super::console::ConsoleRun {
        super::console::console_with_config(env, &self.config, op, lines).one_per(lines)
    }
}
