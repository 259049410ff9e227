//! The certificate files named in the config.

use serde_json::json;

use super::report::{rfc3339, Check, Status, CERT_WARN_DAYS};
use crate::config::Config;

// ---- certificates -------------------------------------------------------

/// One check per certificate file in the config; every PEM block is read.
pub fn cert_checks(cfg: &Config, now: i64) -> Vec<Check> {
    let files = [
        ("vault.ca_cert", cfg.vault.ca_cert.as_ref()),
        ("etcd.ca_cert", cfg.etcd.ca_cert.as_ref()),
        ("etcd.cert", cfg.etcd.cert.as_ref()),
    ];
    files
        .into_iter()
        .filter_map(|(key, path)| path.map(|p| cert_file_check(key, p, now)))
        .collect()
}

fn cert_file_check(key: &str, path: &std::path::Path, now: i64) -> Check {
    use x509_parser::pem::Pem;
    let name = format!("cert {key}");
    let shown = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => return Check::fail(&name, format!("cannot read {shown}: {e}")),
    };
    let mut certs = Vec::new();
    for pem in Pem::iter_from_buffer(&bytes) {
        let pem = match pem {
            Ok(p) => p,
            Err(e) => return Check::fail(&name, format!("{shown}: bad PEM: {e}")),
        };
        if pem.label != "CERTIFICATE" {
            continue;
        }
        let x = match pem.parse_x509() {
            Ok(x) => x,
            Err(e) => return Check::fail(&name, format!("{shown}: bad certificate: {e}")),
        };
        let cn = x
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| x.subject().to_string());
        let not_after = x.validity().not_after.timestamp();
        let status = if not_after <= now {
            Status::Fail
        } else if not_after - now < CERT_WARN_DAYS * 86_400 {
            Status::Warn
        } else {
            Status::Ok
        };
        certs.push((cn, not_after, status));
    }
    if certs.is_empty() {
        return Check::fail(&name, format!("{shown}: no certificate in the file"));
    }
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
