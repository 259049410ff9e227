//! etcd: every member, quorum, leader, raft lag, DB size, alarms, auth.
//!
//! Members are probed one by one first (a dead member must not hide the
//! others); the cluster-wide checks then look only at the members that
//! answered and see a leader.

use std::collections::BTreeSet;

use serde_json::json;

use super::report::{Check, Options, Status, ETCD_TIMEOUT, RAFT_LAG_WARN};
use crate::config::Config;
use crate::etcd::{Etcd, EtcdError, MemberStatus};

/// What one member's probe came to (`None`: it did not finish).
type Probe = Option<Result<MemberStatus, EtcdError>>;

pub(super) async fn checks(cfg: &Config, opts: &Options) -> (Vec<Check>, Option<Etcd>) {
    let endpoints = &cfg.etcd.endpoints;
    let results = Etcd::member_statuses(&cfg.etcd, ETCD_TIMEOUT).await;
    let n = endpoints.len();
    let quorum = n / 2 + 1;
    // A member that answers but sees no leader is cut off from the quorum.
    let up: Vec<&MemberStatus> = results
        .iter()
        .filter_map(|r| r.as_ref().and_then(|r| r.as_ref().ok()))
        .filter(|s| s.leader != 0)
        .collect();
    let quorum_holds = up.len() >= quorum;
    let down_status = if quorum_holds {
        Status::Warn
    } else {
        Status::Fail
    };
    let mut out: Vec<Check> = endpoints
        .iter()
        .zip(&results)
        .map(|(ep, r)| member_check(ep, r, down_status))
        .collect();
    out.push(quorum_check(endpoints, &results, &up, quorum));
    out.push(leader_check(&up));
    if up.is_empty() {
        out.push(Check::skipped("etcd.raft_lag", "no member up"));
        out.push(Check::skipped("etcd.db_size", "no member up"));
    } else {
        out.push(raft_lag_check(&up));
        out.push(db_size_check(&up, opts.etcd_quota_bytes));
    }
    let etcd = match connect(cfg, &up).await {
        Ok(etcd) => etcd,
        Err(failed) => {
            out.push(failed);
            None
        }
    };
    match &etcd {
        Some(etcd) => {
            out.push(alarms_check(cfg, etcd).await);
            out.push(auth_check(cfg));
        }
        None => {
            out.push(Check::skipped("etcd.alarms", "no etcd connection"));
            out.push(Check::skipped("etcd.auth", "no etcd connection"));
        }
    }
    (out, etcd)
}

/// `etcd.member ENDPOINT`: a member that is down is a `warn` while the
/// quorum holds and a `fail` once it does not (`down_status`).
fn member_check(ep: &str, r: &Probe, down_status: Status) -> Check {
    let name = format!("etcd.member {ep}");
    match r {
        Some(Ok(s)) => {
            let data = serde_json::to_value(s).unwrap_or_default();
            if s.leader == 0 {
                Check::new(&name, down_status, "answers but sees no leader").data(data)
            } else if !s.errors.is_empty() {
                Check::warn(&name, format!("errors: {}", s.errors.join("; "))).data(data)
            } else {
                let role = if s.member_id == s.leader {
                    "leader"
                } else {
                    "follower"
                };
                let detail = format!(
                    "{role}, raft index {}, term {}, db {} B, etcd {}",
                    s.raft_index, s.raft_term, s.db_size, s.version
                );
                Check::ok(&name, detail).data(data)
            }
        }
        Some(Err(e)) => Check::new(&name, down_status, format!("unreachable: {e}"))
            .data(json!({"endpoint": ep})),
        None => {
            Check::new(&name, down_status, "probe did not finish").data(json!({"endpoint": ep}))
        }
    }
}

fn quorum_check(
    endpoints: &[String],
    results: &[Probe],
    up: &[&MemberStatus],
    quorum: usize,
) -> Check {
    const NAME: &str = "etcd.quorum";
    let n = endpoints.len();
    let down: Vec<&str> = endpoints
        .iter()
        .zip(results)
        .filter(|(_, r)| !matches!(r, Some(Ok(s)) if s.leader != 0))
        .map(|(e, _)| e.as_str())
        .collect();
    let data = json!({"members": n, "up": up.len(), "quorum": quorum, "down": down});
    if n == 0 {
        Check::fail(NAME, "no endpoints configured")
    } else if down.is_empty() {
        Check::ok(NAME, format!("{n}/{n} members up")).data(data)
    } else if up.len() >= quorum {
        let detail = format!(
            "{}/{n} members up, quorum holds; down: {}",
            up.len(),
            down.join(", ")
        );
        Check::warn(NAME, detail).data(data)
    } else {
        let detail = format!(
            "{}/{n} members up, quorum ({quorum}) lost; down: {}",
            up.len(),
            down.join(", ")
        );
        Check::fail(NAME, detail).data(data)
    }
}

/// Leader and lag are only meaningful among members that see a leader.
fn leader_check(up: &[&MemberStatus]) -> Check {
    const NAME: &str = "etcd.leader";
    let leaders: BTreeSet<u64> = up.iter().map(|s| s.leader).collect();
    match leaders.len() {
        0 => Check::fail(NAME, "no member sees a leader"),
        1 => {
            let leader_id = up.iter().map(|s| s.leader).max().unwrap_or(0);
            let ep = up
                .iter()
                .find(|s| s.member_id == leader_id)
                .map(|s| s.endpoint.as_str())
                .unwrap_or("a member not probed");
            Check::ok(NAME, format!("member {leader_id:x} ({ep})"))
                .data(json!({"leader": leader_id, "endpoint": ep}))
        }
        _ => Check::warn(
            NAME,
            format!("members disagree on the leader: {leaders:x?}"),
        )
        .data(json!({"leaders": leaders})),
    }
}

fn raft_lag_check(up: &[&MemberStatus]) -> Check {
    const NAME: &str = "etcd.raft_lag";
    let max = up.iter().map(|s| s.raft_index).max().unwrap_or(0);
    let lags: Vec<(String, u64)> = up
        .iter()
        .map(|s| (s.endpoint.clone(), max - s.raft_index))
        .collect();
    let worst = lags.iter().map(|(_, l)| *l).max().unwrap_or(0);
    let data = json!({"max_raft_index": max, "lag": lags.iter()
        .map(|(e, l)| json!({"endpoint": e, "lag": l})).collect::<Vec<_>>()});
    if worst > RAFT_LAG_WARN {
        let behind: Vec<String> = lags
            .iter()
            .filter(|(_, l)| *l > RAFT_LAG_WARN)
            .map(|(e, l)| format!("{e} {l} behind"))
            .collect();
        Check::warn(NAME, behind.join(", ")).data(data)
    } else {
        Check::ok(NAME, format!("max lag {worst} entries")).data(data)
    }
}

/// The largest member DB against the backend quota: NOSPACE at 100 %.
fn db_size_check(up: &[&MemberStatus], quota: u64) -> Check {
    const NAME: &str = "etcd.db_size";
    let size = up
        .iter()
        .map(|s| s.db_size.max(0) as u64)
        .max()
        .unwrap_or(0);
    let quota = quota.max(1);
    let pct = size as f64 * 100.0 / quota as f64;
    let detail = format!("{size} B of quota {quota} B ({pct:.1} %)");
    let data = json!({"db_size": size, "quota": quota, "percent": pct});
    let status = if pct >= 100.0 {
        Status::Fail
    } else if pct >= 80.0 {
        Status::Warn
    } else {
        Status::Ok
    };
    Check::new(NAME, status, detail).data(data)
}

/// One client for alarms, auth and the election key, over the members that
/// answered only: etcd-client authenticates against the endpoints it is
/// given, and one dead endpoint makes connect fail. `Ok(None)`: no member
/// is up (the quorum check already failed); `Err`: the `etcd.connect` fail.
async fn connect(cfg: &Config, up: &[&MemberStatus]) -> Result<Option<Etcd>, Check> {
    if up.is_empty() {
        return Ok(None);
    }
    let mut ecfg = cfg.etcd.clone();
    ecfg.endpoints = up.iter().map(|s| s.endpoint.clone()).collect();
    ecfg.connect_timeout_secs = ETCD_TIMEOUT.as_secs();
    ecfg.request_timeout_secs = ETCD_TIMEOUT.as_secs();
    match tokio::time::timeout(ETCD_TIMEOUT * 2, Etcd::connect(&ecfg)).await {
        Ok(Ok(e)) => Ok(Some(e)),
        Ok(Err(e)) => Err(Check::fail("etcd.connect", e.to_string())),
        Err(_) => Err(Check::fail("etcd.connect", "timed out")),
    }
}

async fn alarms_check(cfg: &Config, etcd: &Etcd) -> Check {
    const NAME: &str = "etcd.alarms";
    let alarms = match tokio::time::timeout(ETCD_TIMEOUT, etcd.alarms()).await {
        Ok(Ok(alarms)) => alarms,
        // etcd 3.4 lets any user list alarms; a cluster whose RBAC refuses
        // it is not broken, only opaque.
        Ok(Err(EtcdError::Denied(_))) => {
            let user = cfg.etcd.user.as_deref().unwrap_or_default();
            return Check::warn(NAME, format!("not permitted for etcd user `{user}`"));
        }
        Ok(Err(e)) => return Check::warn(NAME, e.to_string()),
        Err(_) => return Check::warn(NAME, "timed out"),
    };
    if alarms.is_empty() {
        return Check::ok(NAME, "none");
    }
    let bad = alarms.iter().any(|(_, a)| a == "NOSPACE" || a == "CORRUPT");
    let list: Vec<String> = alarms
        .iter()
        .map(|(m, a)| format!("{a} on member {m:x}"))
        .collect();
    let data = json!({"alarms": alarms.iter()
        .map(|(m, a)| json!({"member": m, "alarm": a})).collect::<Vec<_>>()});
    let status = if bad { Status::Fail } else { Status::Warn };
    Check::new(NAME, status, list.join(", ")).data(data)
}

/// etcd refuses to authenticate a user while auth is disabled, so a
/// successful password login proves auth is on.
fn auth_check(cfg: &Config) -> Check {
    match (&cfg.etcd.password_file, cfg.etcd.user.as_deref()) {
        (Some(_), Some(user)) if !user.is_empty() => {
            Check::ok("etcd.auth", format!("enabled (authenticated as `{user}`)"))
        }
        _ => Check::warn(
            "etcd.auth",
            "unknown: no password user configured (client certificate only)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(ep: &str, id: u64, leader: u64, index: u64, db: i64) -> MemberStatus {
        MemberStatus {
            endpoint: ep.into(),
            member_id: id,
            leader,
            raft_index: index,
            raft_term: 2,
            db_size: db,
            version: "3.4.23".into(),
            errors: vec![],
        }
    }

    #[test]
    fn one_member_down_warns_two_fail() {
        let eps: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let (a, b) = (member("a", 1, 1, 10, 100), member("b", 2, 1, 10, 100));
        let gone = || Some(Err(EtcdError::Unavailable("refused".into())));
        let results = vec![Some(Ok(a.clone())), Some(Ok(b.clone())), gone()];
        let c = quorum_check(&eps, &results, &[&a, &b], 2);
        assert_eq!(c.status, Status::Warn, "{}", c.detail);
        assert!(c.detail.contains("down: c"), "{}", c.detail);
        let results = vec![Some(Ok(a.clone())), gone(), gone()];
        assert_eq!(quorum_check(&eps, &results, &[&a], 2).status, Status::Fail);
        // A member that answers without a leader counts as down.
        let cut = member("a", 1, 0, 10, 100);
        let c = member_check("a", &Some(Ok(cut)), Status::Fail);
        assert_eq!(
            (c.status, c.detail.as_str()),
            (Status::Fail, "answers but sees no leader")
        );
        assert_eq!(leader_check(&[]).status, Status::Fail);
        assert!(leader_check(&[&a, &b]).detail.contains("(a)"));
    }

    #[test]
    fn lag_and_db_size_thresholds() {
        let (a, b) = (member("a", 1, 1, 5000, 10), member("b", 2, 1, 3000, 85));
        let c = raft_lag_check(&[&a, &b]);
        assert_eq!(
            (c.status, c.detail.as_str()),
            (Status::Warn, "b 2000 behind")
        );
        assert_eq!(raft_lag_check(&[&a]).status, Status::Ok);
        assert_eq!(db_size_check(&[&a], 100).status, Status::Ok);
        assert_eq!(db_size_check(&[&a, &b], 100).status, Status::Warn);
        assert_eq!(
            db_size_check(&[&member("c", 3, 1, 1, 100)], 100).status,
            Status::Fail
        );
    }
}
