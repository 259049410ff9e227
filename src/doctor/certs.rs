//! The certificate files named in the config.

use serde_json::json;

use super::report::{rfc3339, Check, Status, CERT_WARN_DAYS};
use crate::config::Config;

// ---- certificates -------------------------------------------------------

/// One check per certificate file in the config; every PEM block is read.
pub fn cert_checks(cfg: &Config, now: i64) -> Vec<Check> {
    cfg.certificate_files()
        .into_iter()
        .filter_map(|(key, path)| path.map(|p| cert_file_check(key, p, now)))
        .collect()
}

fn cert_file_check(key: &str, path: &std::path::Path, now: i64) -> Check {
    let name = format!("cert {key}");
    let shown = path.display().to_string();
    let certs: Vec<(String, i64, Status)> = match crate::tls::certificates(path) {
        Ok(c) => c
            .into_iter()
            .map(|(cn, not_after)| {
                let status = if not_after <= now {
                    Status::Fail
                } else if not_after - now < CERT_WARN_DAYS * 86_400 {
                    Status::Warn
                } else {
                    Status::Ok
                };
                (cn, not_after, status)
            })
            .collect(),
        Err(e) => return Check::fail(&name, e),
    };
    let worst = certs.iter().map(|c| c.2).max().unwrap_or(Status::Ok);
    let describe = |(cn, na, _): &(String, i64, Status)| {
        let when = if *na <= now {
            "expired".to_string()
        } else {
            format!("{} d left", (na - now) / 86_400)
        };
        format!("CN={cn} not_after {} ({when})", rfc3339(*na))
    };
    let detail = if worst == Status::Ok {
        // All fine: the one that expires first is the one to watch.
        let first = certs.iter().min_by_key(|c| c.1).expect("not empty");
        format!(
            "{} cert(s); first to expire: {}",
            certs.len(),
            describe(first)
        )
    } else {
        certs
            .iter()
            .filter(|c| c.2 != Status::Ok)
            .map(describe)
            .collect::<Vec<_>>()
            .join("; ")
    };
    let data = json!({
        "file": shown,
        "certificates": certs.iter().map(|(cn, na, st)| json!({
            "cn": cn, "not_after": rfc3339(*na), "not_after_unix": na, "status": st,
        })).collect::<Vec<_>>(),
    });
    Check::new(&name, worst, detail).data(data)
}
