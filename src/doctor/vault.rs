//! Vault: seal, HA, the broker token, the mounts and the transit key.

use secrecy::SecretString;
use serde_json::{json, Value};

use super::report::{human_secs, Check, TOKEN_TTL_WARN_SECS};
use crate::config::{AuthMethod, Config};
use crate::vault::auth::TokenManager;
use crate::vault::Vault;

// ---- Vault --------------------------------------------------------------

/// The Vault checks that need the broker's own token.
const LOGGED_IN_CHECKS: [&str; 4] = [
    "vault.token",
    "vault.mount.kv",
    "vault.mount.transit",
    "vault.transit_key",
];

pub(super) async fn checks(cfg: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let mut vcfg = cfg.vault.clone();
    // A doctor that hangs is no doctor.
    vcfg.request_timeout_secs = vcfg.request_timeout_secs.clamp(1, 5);
    // sys/health and sys/leader need no token.
    let anon = match Vault::with_token(&vcfg, &SecretString::from(String::new())) {
        Ok(v) => v,
        Err(e) => {
            out.push(Check::fail("vault", e.to_string()));
            return out;
        }
    };
    let usable = match anon.health().await {
        Ok(h) if !h.initialized => {
            out.push(Check::fail(
                "vault",
                format!("{} is not initialised", vcfg.addr),
            ));
            false
        }
        Ok(h) if h.sealed => {
            out.push(
                Check::fail("vault", format!("{} is sealed", vcfg.addr))
                    .data(json!({"sealed": true, "initialized": true})),
            );
            false
        }
        Ok(h) => {
            let role = if h.standby { "standby" } else { "active" };
            out.push(
                Check::ok("vault", format!("{} unsealed, {role}", vcfg.addr))
                    .data(json!({"sealed": false, "standby": h.standby})),
            );
            true
        }
        Err(e) => {
            out.push(Check::fail(
                "vault",
                format!("{} unreachable: {e}", vcfg.addr),
            ));
            false
        }
    };
    if !usable {
        let why = "Vault is sealed or unreachable";
        for name in std::iter::once(&"vault.ha").chain(&LOGGED_IN_CHECKS) {
            out.push(Check::skipped(name, why));
        }
        return out;
    }
    out.push(match anon.leader().await {
        Ok(l) if !l.ha_enabled => Check::ok("vault.ha", "HA not enabled (single node)")
            .data(serde_json::to_value(&l).unwrap_or_default()),
        Ok(l) if l.leader_address.is_empty() => {
            Check::warn("vault.ha", "HA enabled but no active node known")
                .data(serde_json::to_value(&l).unwrap_or_default())
        }
        Ok(l) => Check::ok(
            "vault.ha",
            format!(
                "HA enabled, leader {}{}",
                l.leader_address,
                if l.is_self { " (this node)" } else { "" }
            ),
        )
        .data(serde_json::to_value(&l).unwrap_or_default()),
        Err(e) => Check::warn("vault.ha", format!("sys/leader: {e}")),
    });

    // A response-wrapped secret_id is single use: the running service has
    // consumed it (or needs it), so the doctor must not unwrap it.
    let a = &vcfg.auth;
    if a.method == AuthMethod::Approle && a.secret_id_wrapped {
        let why = "approle secret_id is response-wrapped (single use); doctor does not log in";
        for name in &LOGGED_IN_CHECKS {
            out.push(Check::skipped(name, why));
        }
        return out;
    }
    let broker = match TokenManager::login(&vcfg).await {
        Ok(t) => t,
        Err(e) => {
            out.push(Check::fail("vault.token", format!("login failed: {e}")));
            for name in ["vault.mount.kv", "vault.mount.transit", "vault.transit_key"] {
                out.push(Check::skipped(name, "no broker token"));
            }
            return out;
        }
    };
    let vault = broker.current();
    out.push(token_check(&vault, &broker).await);
    out.push(mount_check(&vault, "vault.mount.kv", &vcfg.kv_mount, "kv").await);
    out.push(
        mount_check(
            &vault,
            "vault.mount.transit",
            &vcfg.transit_mount,
            "transit",
        )
        .await,
    );
    // The broker may only encrypt/decrypt with its key, not create one: a
    // successful encryption proves the key exists and is usable.
    let plaintext = SecretString::from("doctor".to_string());
    let target = format!("{}/{}", vcfg.transit_mount, vcfg.transit_key);
    out.push(
        match vault
            .transit_encrypt(&vcfg.transit_mount, &vcfg.transit_key, &plaintext)
            .await
        {
            Ok(_) => Check::ok("vault.transit_key", format!("{target}: encryption works")),
            Err(e) => Check::fail("vault.transit_key", format!("{target}: {e}")),
        }
        .data(json!({"mount": vcfg.transit_mount, "key": vcfg.transit_key})),
    );
    out
}

async fn token_check(vault: &Vault, broker: &TokenManager) -> Check {
    let status = broker.status();
    let policies = status.policies.join(",");
    match vault.token_lifetime().await {
        Ok(l) => {
            let data = json!({
                "ttl_secs": l.ttl,
                "period_secs": l.period,
                "explicit_max_ttl_secs": l.explicit_max_ttl,
                "renewable": l.renewable,
                "policies": l.policies,
            });
            let policies = l.policies.join(",");
            if l.ttl == 0 {
                return Check::ok("vault.token", format!("no TTL; policies {policies}")).data(data);
            }
            let kind = if l.period > 0 {
                format!("periodic {}", human_secs(l.period))
            } else {
                "not periodic".to_string()
            };
            let detail = format!("TTL {} ({kind}); policies {policies}", human_secs(l.ttl));
            if l.period == 0 && l.ttl < TOKEN_TTL_WARN_SECS {
                Check::warn("vault.token", detail).data(data)
            } else {
                Check::ok("vault.token", detail).data(data)
            }
        }
        Err(e) => Check::warn(
            "vault.token",
            format!("logged in (policies {policies}) but lookup-self failed: {e}"),
        ),
    }
}

async fn mount_check(vault: &Vault, name: &str, mount: &str, want: &str) -> Check {
    match vault.mount_info(mount).await {
        Ok(m) => {
            let version = m
                .options
                .as_ref()
                .and_then(|o| o.get("version"))
                .and_then(Value::as_str)
                .map(str::to_string);
            let data = json!({"mount": mount, "type": m.kind, "version": version});
            if m.kind != want {
                return Check::fail(name, format!("{mount}/ is a {} mount, not {want}", m.kind))
                    .data(data);
            }
            if want == "kv" && version.as_deref() != Some("2") {
                return Check::fail(name, format!("{mount}/ is not KV version 2")).data(data);
            }
            let v = version.map(|v| format!(" v{v}")).unwrap_or_default();
            Check::ok(name, format!("{mount}/ ({want}{v})")).data(data)
        }
        // 403: the mount does not exist or the broker has no path on it.
        Err(e) => Check::fail(name, format!("{mount}/: {e}")).data(json!({"mount": mount})),
    }
}
