//! The pod's own confinement check: is this broker fenced in by
//! NetworkPolicy? The only module that imports `kube` / `k8s-openapi`.
//!
//! Inside a pod (`KUBERNETES_SERVICE_HOST` set, as the kubelet does) the
//! broker reads its own Pod (name from `POD_NAME`, the downward API, else
//! `HOSTNAME`) and every NetworkPolicy of its namespace with its
//! ServiceAccount token (`kubernetes.service_account_dir`: `token`,
//! `ca.crt`, `namespace`), then evaluates them the way the API defines them:
//! which policies select the pod for Ingress and for Egress, and what egress
//! they allow. The verdict:
//!
//! - **fail**: no policy selects the pod for Egress (it may talk to anything);
//! - **warn**: not selected for Ingress, or some egress is wider than the
//!   broker needs: Vault's and etcd's ports, DNS, the API server, and
//!   Telegram's published ranges on 443 (a single host on 443 is fine);
//! - **ok** otherwise.
//!
//! Outside a pod it reports "not in a pod" and does nothing. `doctor` shows
//! the report; `run` with `kubernetes.require_confinement` refuses to start
//! on *fail* (or when the API cannot be read) and re-checks periodically.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ::kube::api::{Api, ListParams};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::Config;

/// Telegram's published ranges (<https://core.telegram.org/resources/cidr.txt>),
/// the same list k8s/base/vaultgram-networkpolicy.yaml allows on 443.
pub const TELEGRAM_RANGES: [&str; 14] = [
    "91.108.56.0/22",
    "91.108.4.0/22",
    "91.108.8.0/22",
    "91.108.16.0/22",
    "91.108.12.0/22",
    "149.154.160.0/20",
    "91.105.192.0/23",
    "91.108.20.0/22",
    "185.76.151.0/24",
    "2001:b28:f23d::/48",
    "2001:b28:f23f::/48",
    "2001:67c:4e8::/48",
    "2001:b28:f23c::/48",
    "2a0a:f280::/32",
];

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubernetes: {0}")]
    Setup(String),
    #[error("kubernetes: cannot read {what}: forbidden for this ServiceAccount ({message}); apply the Role vaultgram-confinement (k8s/base/vaultgram.yaml)")]
    Forbidden { what: String, message: String },
    #[error("kubernetes: cannot read {what}: {message}")]
    Api { what: String, message: String },
}

/// Where the broker runs, when it runs in a pod.
#[derive(Debug, Clone)]
pub struct Identity {
    pub api: String,
    pub namespace: String,
    pub pod: String,
    sa_dir: PathBuf,
}

/// `None` outside a pod: no `KUBERNETES_SERVICE_HOST`.
pub fn detect(cfg: &Config) -> Result<Option<Identity>, KubeError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let Some(host) = env("KUBERNETES_SERVICE_HOST") else {
        return Ok(None);
    };
    let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => host,
    };
    let sa_dir = cfg.kubernetes.service_account_dir.clone();
    let namespace = read_trimmed(&sa_dir.join("namespace"))?;
    let pod = env("POD_NAME").or_else(|| env("HOSTNAME")).ok_or_else(|| {
        KubeError::Setup("no pod name: set POD_NAME from the downward API (metadata.name)".into())
    })?;
    Ok(Some(Identity {
        api: format!("https://{host}:{port}"),
        namespace,
        pod,
        sa_dir,
    }))
}

fn read_trimmed(path: &Path) -> Result<String, KubeError> {
    let s = std::fs::read_to_string(path)
        .map_err(|e| KubeError::Setup(format!("{}: {e}", path.display())))?;
    let s = s.trim();
    if s.is_empty() {
        return Err(KubeError::Setup(format!("{} is empty", path.display())));
    }
    Ok(s.to_string())
}

/// The egress the broker needs; anything beyond it is flagged.
#[derive(Debug, Clone)]
pub struct Needs {
    /// TCP ports of Vault, etcd, the API server and a configured proxy.
    pub tcp_ports: Vec<u16>,
    pub telegram: Vec<IpNet>,
}

impl Needs {
    pub fn from_config(cfg: &Config, id: Option<&Identity>) -> Needs {
        // DNS, and Vault's and etcd's standard ports besides the configured
        // ones (policies name the pods' ports, the config may name a Service's).
        let mut tcp_ports = vec![53, 2379, 8200];
        let port_of = |u: &str| {
            url::Url::parse(u)
                .ok()
                .and_then(|u| u.port_or_known_default())
        };
        tcp_ports.extend(port_of(&cfg.vault.addr));
        tcp_ports.extend(cfg.etcd.endpoints.iter().filter_map(|e| port_of(e)));
        if let Some(p) = cfg.telegram.proxy.as_deref() {
            tcp_ports.extend(port_of(p));
        }
        if let Some(id) = id {
            tcp_ports.extend(port_of(&id.api));
            // The API service's port (443) is DNATed to the server's (6443).
            tcp_ports.push(6443);
        }
        tcp_ports.sort_unstable();
        tcp_ports.dedup();
        Needs {
            tcp_ports,
            telegram: TELEGRAM_RANGES
                .iter()
                .map(|c| c.parse().expect("valid range"))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        }
    }
}

/// What the policies of the pod's namespace do to it.
#[derive(Debug, Clone)]
pub struct Report {
    pub pod: String,
    pub namespace: String,
    pub ingress_by: Vec<String>,
    pub egress_by: Vec<String>,
    /// One line per allowed (destination, ports) pair.
    pub allowed: Vec<String>,
    /// Why the verdict is not ok.
    pub findings: Vec<String>,
    pub verdict: Verdict,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut s = format!(
            "pod {}/{}: {}; selected for Ingress by [{}], for Egress by [{}]",
            self.namespace,
            self.pod,
            self.verdict.as_str(),
            self.ingress_by.join(", "),
            self.egress_by.join(", ")
        );
        for f in &self.findings {
            s.push_str("; ");
            s.push_str(f);
        }
        s
    }
}

/// What `run` shows on `/readyz` and in `vaultgram_confinement`, and what
/// `doctor` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub state: Confinement,
    pub detail: String,
    /// `kubernetes.require_confinement`.
    pub required: bool,
    #[serde(skip)]
    pub report: Option<Report>,
}

/// The confinement state: a [`Verdict`], or why there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Confinement {
    Ok,
    Warn,
    Fail,
    /// The API could not be read.
    Error,
    NotInPod,
}

impl Confinement {
    pub const ALL: [Confinement; 5] = [
        Confinement::Ok,
        Confinement::Warn,
        Confinement::Fail,
        Confinement::Error,
        Confinement::NotInPod,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Confinement::Ok => "ok",
            Confinement::Warn => "warn",
            Confinement::Fail => "fail",
            Confinement::Error => "error",
            Confinement::NotInPod => "not_in_pod",
        }
    }
}

impl From<Verdict> for Confinement {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Ok => Confinement::Ok,
            Verdict::Warn => Confinement::Warn,
            Verdict::Fail => Confinement::Fail,
        }
    }
}

impl Status {
    /// Whether `run` must refuse to start (and `/readyz` fail).
    pub fn blocks(&self) -> bool {
        self.required && matches!(self.state, Confinement::Fail | Confinement::Error)
    }
}

/// Detects the pod and checks it; never fails: a failure is a state.
pub async fn status(cfg: &Config) -> Status {
    let required = cfg.kubernetes.require_confinement;
    let id = match detect(cfg) {
        Ok(Some(id)) => id,
        Ok(None) => {
            return Status {
                state: Confinement::NotInPod,
                detail: "not in a pod (no KUBERNETES_SERVICE_HOST): nothing to check".into(),
                required,
                report: None,
            }
        }
        Err(e) => {
            return Status {
                state: Confinement::Error,
                detail: e.to_string(),
                required,
                report: None,
            }
        }
    };
    let needs = Needs::from_config(cfg, Some(&id));
    match tokio::time::timeout(std::time::Duration::from_secs(15), check(&id, &needs)).await {
        Ok(Ok(r)) => Status {
            state: r.verdict.into(),
            detail: r.summary(),
            required,
            report: Some(r),
        },
        Ok(Err(e)) => Status {
            state: Confinement::Error,
            detail: e.to_string(),
            required,
            report: None,
        },
        Err(_) => Status {
            state: Confinement::Error,
            detail: format!("kubernetes: no answer from {} within 15 s", id.api),
            required,
            report: None,
        },
    }
}

/// Reads the pod and its namespace's policies and evaluates them.
pub async fn check(id: &Identity, needs: &Needs) -> Result<Report, KubeError> {
    let client = client(id)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &id.namespace);
    let what_pod = format!("pod {}/{}", id.namespace, id.pod);
    let pod = pods
        .get(&id.pod)
        .await
        .map_err(|e| api_error(&what_pod, e))?;
    let labels = pod.metadata.labels.unwrap_or_default();
    let policies: Api<NetworkPolicy> = Api::namespaced(client, &id.namespace);
    let what_np = format!("NetworkPolicies in namespace {}", id.namespace);
    let list = policies
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error(&what_np, e))?;
    Ok(evaluate(
        &id.namespace,
        &id.pod,
        &labels,
        &list.items,
        needs,
    ))
}

fn client(id: &Identity) -> Result<::kube::Client, KubeError> {
    let uri = id
        .api
        .parse()
        .map_err(|e| KubeError::Setup(format!("API address {}: {e}", id.api)))?;
    let mut config = ::kube::Config::new(uri);
    config.default_namespace = id.namespace.clone();
    let ca_file = id.sa_dir.join("ca.crt");
    let pem = std::fs::read(&ca_file)
        .map_err(|e| KubeError::Setup(format!("{}: {e}", ca_file.display())))?;
    let der: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(&pem)
        .filter_map(Result::ok)
        .map(|p| p.contents)
        .collect();
    if der.is_empty() {
        return Err(KubeError::Setup(format!(
            "{}: no certificate",
            ca_file.display()
        )));
    }
    config.root_cert = Some(der);
    config.read_timeout = Some(std::time::Duration::from_secs(10));
    let token = id.sa_dir.join("token");
    if !token.is_file() {
        return Err(KubeError::Setup(format!(
            "{}: no such file",
            token.display()
        )));
    }
    // A file, not a value: the kubelet rotates it and kube re-reads it.
    config.auth_info.token_file = Some(token.display().to_string());
    ::kube::Client::try_from(config).map_err(|e| KubeError::Setup(format!("client: {e}")))
}

fn api_error(what: &str, e: ::kube::Error) -> KubeError {
    match e {
        ::kube::Error::Api(status) if status.code == 403 => KubeError::Forbidden {
            what: what.into(),
            message: clean(&status.message),
        },
        ::kube::Error::Api(status) => KubeError::Api {
            what: what.into(),
            message: format!("{} {}", status.code, clean(&status.message)),
        },
        other => KubeError::Api {
            what: what.into(),
            message: clean(&other.to_string()),
        },
    }
}

/// The policy semantics of the NetworkPolicy API, for one pod.
pub fn evaluate(
    namespace: &str,
    pod: &str,
    labels: &BTreeMap<String, String>,
    policies: &[NetworkPolicy],
    needs: &Needs,
) -> Report {
    let mut r = Report {
        pod: pod.into(),
        namespace: namespace.into(),
        ingress_by: vec![],
        egress_by: vec![],
        allowed: vec![],
        findings: vec![],
        verdict: Verdict::Ok,
    };
    for p in policies {
        let name = p.metadata.name.clone().unwrap_or_default();
        let Some(spec) = &p.spec else { continue };
        if !selects(spec.pod_selector.as_ref(), labels) {
            continue;
        }
        // policyTypes defaults to Ingress, plus Egress when egress rules exist.
        let types = spec.policy_types.clone().unwrap_or_else(|| {
            let mut t = vec!["Ingress".to_string()];
            if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) {
                t.push("Egress".into());
            }
            t
        });
        if types.iter().any(|t| t == "Ingress") {
            r.ingress_by.push(name.clone());
        }
        if !types.iter().any(|t| t == "Egress") {
            continue;
        }
        r.egress_by.push(name.clone());
        for rule in spec.egress.iter().flatten() {
            let ports = describe_ports(rule.ports.as_deref());
            let peers = rule.to.as_deref().unwrap_or_default();
            if peers.is_empty() {
                r.allowed
                    .push(format!("{name}: any destination on {ports}"));
                r.findings
                    .push(format!("{name} allows any destination on {ports}"));
                continue;
            }
            let wide_ports = wide_ports(rule.ports.as_deref(), needs);
            for peer in peers {
                let dest = describe_peer(peer);
                r.allowed.push(format!("{name}: {dest} on {ports}"));
                if let Some(w) = &wide_ports {
                    r.findings.push(format!("{name} allows {dest} on {w}"));
                } else if let Some(why) = wide_block(peer, rule.ports.as_deref(), needs) {
                    r.findings
                        .push(format!("{name} allows {dest} on {ports}: {why}"));
                }
            }
        }
    }
    if r.egress_by.is_empty() {
        r.findings.insert(
            0,
            "no NetworkPolicy selects the pod for Egress: it may connect anywhere".into(),
        );
        r.verdict = Verdict::Fail;
    } else {
        if r.ingress_by.is_empty() {
            r.findings
                .push("no NetworkPolicy selects the pod for Ingress".into());
        }
        if !r.findings.is_empty() {
            r.verdict = Verdict::Warn;
        }
    }
    r
}

/// Text from the API server is shown to people: no control characters.
fn clean(s: &str) -> String {
    crate::text::escape_line(s).into_owned()
}

fn selects(sel: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    // An absent or empty podSelector selects every pod of the namespace.
    let Some(sel) = sel else { return true };
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

fn port_text(p: &NetworkPolicyPort) -> String {
    let proto = p.protocol.as_deref().unwrap_or("TCP");
    match (&p.port, p.end_port) {
        (None, _) => format!("all {proto} ports"),
        (Some(IntOrString::Int(a)), Some(b)) if b > *a => format!("{a}-{b}/{proto}"),
        (Some(IntOrString::Int(a)), _) => format!("{a}/{proto}"),
        (Some(IntOrString::String(n)), _) => format!("{}/{proto}", clean(n)),
    }
}

fn describe_ports(ports: Option<&[NetworkPolicyPort]>) -> String {
    match ports {
        None | Some([]) => "all ports".into(),
        Some(ps) => ps.iter().map(port_text).collect::<Vec<_>>().join(","),
    }
}

/// The ports of a rule that the broker never needs, if any.
fn wide_ports(ports: Option<&[NetworkPolicyPort]>, needs: &Needs) -> Option<String> {
    let ps = match ports {
        None | Some([]) => return Some("all ports".into()),
        Some(ps) => ps,
    };
    let wide: Vec<String> = ps
        .iter()
        .filter(|p| {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            match (&p.port, p.end_port) {
                (Some(IntOrString::Int(a)), end) if end.is_none_or(|b| b <= *a) => {
                    let a = u16::try_from(*a).unwrap_or(0);
                    match proto {
                        "UDP" => a != 53,
                        "TCP" => a != 443 && !needs.tcp_ports.contains(&a),
                        _ => true,
                    }
                }
                // A range, a named port or every port.
                _ => true,
            }
        })
        .map(port_text)
        .collect();
    (!wide.is_empty()).then(|| wide.join(","))
}

/// An ipBlock wider than one host on 443 must lie inside Telegram's ranges;
/// no ipBlock may be a default route.
fn wide_block(
    peer: &NetworkPolicyPeer,
    ports: Option<&[NetworkPolicyPort]>,
    needs: &Needs,
) -> Option<String> {
    let block = peer.ip_block.as_ref()?;
    let Ok(net) = block.cidr.parse::<IpNet>() else {
        return Some("unparsable CIDR".into());
    };
    if net.prefix_len() == 0 {
        return Some("every address".into());
    }
    let host = net.prefix_len() == net.max_prefix_len();
    let on_443 = ports
        .into_iter()
        .flatten()
        .any(|p| matches!(p.port, Some(IntOrString::Int(443))));
    if on_443 && !host && !needs.telegram.iter().any(|t| t.contains(&net)) {
        return Some("wider than Telegram's published ranges".into());
    }
    None
}

fn describe_selector(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    parts.extend(sel.match_expressions.iter().flatten().map(|e| {
        format!(
            "{} {} ({})",
            e.key,
            e.operator,
            e.values.as_deref().unwrap_or_default().join(",")
        )
    }));
    if parts.is_empty() {
        "all".into()
    } else {
        clean(&parts.join(","))
    }
}

fn describe_peer(p: &NetworkPolicyPeer) -> String {
    if let Some(b) = &p.ip_block {
        let except = b.except.as_deref().unwrap_or_default();
        let mut s = clean(&b.cidr);
        if !except.is_empty() {
            s.push_str(&format!(" except {}", clean(&except.join(","))));
        }
        return s;
    }
    match (&p.namespace_selector, &p.pod_selector) {
        (Some(ns), Some(pod)) => format!(
            "pods [{}] in namespaces [{}]",
            describe_selector(pod),
            describe_selector(ns)
        ),
        (Some(ns), None) => format!("all pods in namespaces [{}]", describe_selector(ns)),
        (None, Some(pod)) => format!("pods [{}] of this namespace", describe_selector(pod)),
        (None, None) => "nothing (empty peer)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs() -> Needs {
        Needs {
            tcp_ports: vec![53, 2379, 6443, 8200],
            telegram: TELEGRAM_RANGES.iter().map(|c| c.parse().unwrap()).collect(),
        }
    }

    fn policy(yaml: serde_json::Value) -> NetworkPolicy {
        serde_json::from_value(yaml).unwrap()
    }

    fn labels() -> BTreeMap<String, String> {
        [(
            "app.kubernetes.io/name".to_string(),
            "vaultgram".to_string(),
        )]
        .into()
    }

    fn egress(rules: serde_json::Value) -> NetworkPolicy {
        policy(serde_json::json!({
            "metadata": {"name": "eg"},
            "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "vaultgram"}},
                     "policyTypes": ["Egress"], "egress": rules}
        }))
    }

    fn deny_all() -> NetworkPolicy {
        policy(serde_json::json!({
            "metadata": {"name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
        }))
    }

    #[test]
    fn no_egress_policy_fails() {
        let ingress_only = policy(serde_json::json!({
            "metadata": {"name": "in"}, "spec": {"podSelector": {}}
        }));
        let r = evaluate("ns", "p", &labels(), &[ingress_only], &needs());
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert_eq!(r.ingress_by, ["in"]);
        let other = policy(serde_json::json!({
            "metadata": {"name": "other"},
            "spec": {"podSelector": {"matchLabels": {"app": "x"}}, "policyTypes": ["Egress"]}
        }));
        assert_eq!(
            evaluate("ns", "p", &labels(), &[other], &needs()).verdict,
            Verdict::Fail
        );
    }

    #[test]
    fn narrow_egress_is_ok() {
        let eg = egress(serde_json::json!([
            {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "vault"}}}],
             "ports": [{"protocol": "TCP", "port": 8200}]},
            {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
             "ports": [{"protocol": "UDP", "port": 53}, {"port": 53}]},
            {"to": [{"ipBlock": {"cidr": "149.154.160.0/20"}}, {"ipBlock": {"cidr": "192.0.2.1/32"}}],
             "ports": [{"protocol": "TCP", "port": 443}]}
        ]));
        let r = evaluate("ns", "p", &labels(), &[deny_all(), eg], &needs());
        assert_eq!(r.verdict, Verdict::Ok, "{r:?}");
        assert_eq!(r.egress_by, ["deny", "eg"]);
        assert_eq!(r.allowed.len(), 4);
    }

    #[test]
    fn wide_egress_warns() {
        for (rules, want) in [
            (serde_json::json!([{}]), "any destination on all ports"),
            (
                serde_json::json!([{"ports": [{"port": 443}]}]),
                "any destination on 443/TCP",
            ),
            (
                serde_json::json!([{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 8200}]}]),
                "every address",
            ),
            (
                serde_json::json!([{"to": [{"ipBlock": {"cidr": "8.8.0.0/16"}}], "ports": [{"port": 443}]}]),
                "wider than Telegram",
            ),
            (
                serde_json::json!([{"to": [{"podSelector": {}}], "ports": [{"port": 80}]}]),
                "on 80/TCP",
            ),
            (
                serde_json::json!([{"to": [{"podSelector": {}}]}]),
                "on all ports",
            ),
            (
                serde_json::json!([{"to": [{"podSelector": {}}], "ports": [{"port": 1, "endPort": 9000}]}]),
                "1-9000/TCP",
            ),
        ] {
            let r = evaluate(
                "ns",
                "p",
                &labels(),
                &[deny_all(), egress(rules.clone())],
                &needs(),
            );
            assert_eq!(r.verdict, Verdict::Warn, "{rules}: {r:?}");
            assert!(
                r.findings.iter().any(|f| f.contains(want)),
                "{rules}: {:?}",
                r.findings
            );
        }
    }

    #[test]
    fn selectors_follow_the_api() {
        let l = labels();
        let sel = |v: serde_json::Value| -> LabelSelector { serde_json::from_value(v).unwrap() };
        assert!(selects(None, &l));
        assert!(selects(Some(&sel(serde_json::json!({}))), &l));
        assert!(!selects(
            Some(&sel(serde_json::json!({"matchLabels": {"a": "b"}}))),
            &l
        ));
        let expr = |op: &str, vals: &[&str]| {
            sel(
                serde_json::json!({"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": op, "values": vals}]}),
            )
        };
        assert!(selects(Some(&expr("In", &["vaultgram", "x"])), &l));
        assert!(!selects(Some(&expr("NotIn", &["vaultgram"])), &l));
        assert!(selects(Some(&expr("Exists", &[])), &l));
        assert!(!selects(Some(&expr("DoesNotExist", &[])), &l));
        assert!(!selects(Some(&expr("Bogus", &[])), &l));
    }

    #[test]
    fn ingress_missing_warns_and_default_types_follow_rules() {
        // No policyTypes: Ingress, plus Egress because egress rules exist.
        let p = policy(serde_json::json!({
            "metadata": {"name": "implicit"},
            "spec": {"podSelector": {}, "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": 2379}]}]}
        }));
        let r = evaluate("ns", "p", &labels(), &[p], &needs());
        assert_eq!(
            (r.verdict, r.ingress_by.len(), r.egress_by.len()),
            (Verdict::Ok, 1, 1),
            "{r:?}"
        );
        let eg = egress(serde_json::json!([]));
        let r = evaluate("ns", "p", &labels(), &[eg], &needs());
        assert_eq!(r.verdict, Verdict::Warn);
        assert!(r.findings.iter().any(|f| f.contains("for Ingress")));
    }

    #[test]
    fn names_in_policies_are_sanitised() {
        let eg = egress(
            serde_json::json!([{"to": [{"podSelector": {"matchLabels": {"a\u{1b}[31m": "b"}}}],
                                           "ports": [{"port": "web\u{7}"}]}]),
        );
        let r = evaluate("ns", "p", &labels(), &[eg], &needs());
        for line in r.allowed.iter().chain(&r.findings) {
            assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        }
    }
}
