//! Kubernetes for real: a kube-apiserver of the release k8s-openapi names
//! (tests/common/kube.rs). The manifests of k8s/ applied server-side, the
//! ServiceAccount's rights as the API server's RBAC decides them, Vault's
//! kubernetes auth through a real TokenReview, and the broker's own
//! confinement check (src/kube.rs) reading its Pod and NetworkPolicies
//! with its ServiceAccount token.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use vaultgram::config::AuthMethod;
use vaultgram::error::ErrorKind;
use vaultgram::vault::auth::TokenManager;
use vaultgram::vault::token::OperatorTokens;

use super::socket::Broker;
use super::vault_auth::{err_text, read_loop};
use super::TestFn;
use crate::common::cluster::repo_root;
use crate::common::kube::KubeApi;
use crate::common::pki::write_private;
use crate::common::Env;

/// `disruptive::`: they run alone. Starting the API server and the Go
/// kubectl processes loads the 2-core CI machine enough to push other tests'
/// Vault and etcd calls past their timeouts (seen in CI).
pub const TESTS: &[(&str, TestFn)] = &[
    (
        "disruptive::kubernetes::manifests_apply_server_side_and_stay_unchanged",
        manifests_apply_server_side,
    ),
    (
        "disruptive::kubernetes::service_account_can_do_only_what_the_broker_needs",
        can_i_matrix,
    ),
    (
        "disruptive::kubernetes::vault_login_through_a_real_token_review",
        vault_login,
    ),
    (
        "disruptive::kubernetes::confinement_checked_against_the_api_server",
        confinement,
    ),
    (
        "disruptive::kubernetes::monitoring_objects_apply_against_the_operator_crds",
        monitoring_objects,
    ),
];

const NS: &str = "vaultgram";

/// Tests that apply, delete or change objects of namespace `vaultgram`
/// take turns (one API server serves them all).
fn namespace_turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Server-side apply of a kustomization; the Vault StatefulSet of the
/// other flavour is removed first (its volumeClaimTemplates are immutable,
/// which the API server enforces and schema checks cannot see).
fn apply(k: &KubeApi, dir: &str) -> Output {
    let path = repo_root().join(dir);
    // The flavour is told by the ConfigMap the Vault pods mount.
    let live = k.kubectl(&["get", "statefulset", "vault", "-n", NS, "-o", "json"]);
    let rendered = k.ok(&["kustomize", path.to_str().unwrap()]);
    let want_raft = String::from_utf8_lossy(&rendered).contains("name: openbao-config");
    let have_raft = String::from_utf8_lossy(&live.stdout).contains("\"openbao-config\"");
    if live.status.success() && want_raft != have_raft {
        k.ok(&["delete", "statefulset", "vault", "-n", NS, "--wait=false"]);
    }
    k.kubectl(&["apply", "--server-side", "-k", path.to_str().unwrap()])
}

fn apply_base(k: &KubeApi) {
    let out = apply(k, "k8s");
    assert!(out.status.success(), "apply k8s/: {}", stderr(&out));
}

/// Every object's resourceVersion in the namespace (and the cluster-scoped
/// binding): equal before and after means nothing changed.
fn versions(k: &KubeApi) -> Vec<String> {
    let out = k.ok(&[
        "get",
        "serviceaccounts,configmaps,services,deployments,statefulsets,poddisruptionbudgets,networkpolicies,roles,rolebindings",
        "-n",
        NS,
        "-o",
        "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion}{\"\\n\"}{end}",
    ]);
    let mut v: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn manifests_apply_server_side(env: &Env) {
    let k = env.kube();
    let _turn = namespace_turn();
    for dir in ["k8s", "k8s/overlays/openbao-raft", "k8s"] {
        let first = apply(k, dir);
        assert!(first.status.success(), "apply {dir}: {}", stderr(&first));
        // Warnings (deprecated APIs, Pod Security "would violate") count as failures.
        assert!(
            !stderr(&first).contains("Warning"),
            "apply {dir}: {}",
            stderr(&first)
        );
        let before = versions(k);
        assert!(before.len() >= 25, "{before:?}");
        let second = apply(k, dir);
        assert!(
            second.status.success(),
            "re-apply {dir}: {}",
            stderr(&second)
        );
        assert_eq!(
            versions(k),
            before,
            "a second apply of {dir} changed objects"
        );
        let path = repo_root().join(dir);
        let diff = k.kubectl(&["diff", "--server-side", "-k", path.to_str().unwrap()]);
        assert_eq!(
            diff.status.code(),
            Some(0),
            "kubectl diff --server-side {dir}:\n{}{}",
            String::from_utf8_lossy(&diff.stdout),
            stderr(&diff)
        );
        eprintln!(
            "kubernetes: {dir}: {} objects applied; second apply and diff: no change",
            before.len()
        );
    }
    // The namespace enforces Pod Security "restricted": the Deployment's
    // pod template is admitted, a privileged variant is not.
    let pod = pod_from_template(k, "vaultgram-admission", |_| {});
    apply_json(k, &pod).unwrap();
    let bad = pod_from_template(k, "vaultgram-privileged", |p| {
        // Within what the API server itself allows (privileged is refused
        // before admission): root and escalation, which only PSA forbids.
        p["spec"]["securityContext"]["runAsNonRoot"] = json!(false);
        p["spec"]["securityContext"]["runAsUser"] = json!(0);
        p["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = json!(false);
        p["spec"]["containers"][0]["securityContext"]["runAsUser"] = json!(0);
        p["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = json!(true);
    });
    let e = apply_json(k, &bad).unwrap_err();
    assert!(e.contains("violates PodSecurity \"restricted"), "{e}");
    k.ok(&[
        "delete",
        "pod",
        "vaultgram-admission",
        "-n",
        NS,
        "--grace-period=0",
        "--wait=false",
    ]);
}

/// k8s/monitoring/ (ServiceMonitor, PrometheusRule, dashboard ConfigMap)
/// is server-side applied with the prometheus-operator CRDs installed, so
/// the API server validates both custom objects against the operator's
/// schemas (a rule with a malformed `for` is refused: the check can fail);
/// a second apply changes nothing; the ServiceMonitor selects the broker's
/// Service and port; the ConfigMap carries monitoring/dashboard.json.
fn monitoring_objects(env: &Env) {
    let k = env.kube();
    let _turn = namespace_turn();
    let crds = std::env::var_os("PROMETHEUS_OPERATOR_CRDS")
        .map(std::path::PathBuf::from)
        .expect("PROMETHEUS_OPERATOR_CRDS is not set: scripts/test.sh sets it (prometheus_operator_crds in scripts/lib.sh)");
    for f in [
        "monitoring.coreos.com_servicemonitors.yaml",
        "monitoring.coreos.com_prometheusrules.yaml",
    ] {
        k.ok(&[
            "apply",
            "--server-side",
            "-f",
            crds.join(f).to_str().unwrap(),
        ]);
    }
    k.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/servicemonitors.monitoring.coreos.com",
        "crd/prometheusrules.monitoring.coreos.com",
    ]);
    apply_base(k);
    let dir = repo_root().join("k8s/monitoring");
    let dir = dir.to_str().unwrap();
    let mut versions = Vec::new();
    for round in 0..2 {
        let out = k.kubectl(&["apply", "--server-side", "-k", dir]);
        assert!(
            out.status.success(),
            "apply k8s/monitoring: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains("Warning"), "{}", stderr(&out));
        let v = k.ok(&[
            "get",
            "servicemonitor/vaultgram",
            "prometheusrule/vaultgram",
            "configmap/vaultgram-dashboard",
            "-n",
            NS,
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion} {end}",
        ]);
        versions.push(String::from_utf8(v).unwrap());
        if round == 1 {
            assert_eq!(versions[0], versions[1], "a second apply changed objects");
        }
    }
    assert_eq!(versions[0].split_whitespace().count(), 3, "{}", versions[0]);

    // The ServiceMonitor selects the broker's Service, by a port it has.
    let sm: Value = get_json(k, "servicemonitor", "vaultgram");
    let svc: Value = get_json(k, "service", "vaultgram");
    for (key, want) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][key], want,
            "selector {key}: {svc}"
        );
    }
    let port = sm["spec"]["endpoints"][0]["port"].as_str().unwrap();
    assert!(
        svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == port),
        "the Service has no port {port}: {svc}"
    );

    // Every alert of monitoring/rules.yml is in the PrometheusRule.
    let pr: Value = get_json(k, "prometheusrule", "vaultgram");
    let alerts: Vec<&str> = pr["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    let source = std::fs::read_to_string(repo_root().join("monitoring/rules.yml")).unwrap();
    let want = source.matches("- alert: ").count();
    assert_eq!(alerts.len(), want, "{alerts:?}");

    // The operator's schema is enforced: a malformed duration is refused.
    let mut bad = pr.clone();
    bad["metadata"] = json!({"name": "vaultgram-bad", "namespace": NS});
    bad["spec"]["groups"][0]["rules"][0]["for"] = json!("5 minutes");
    let e = apply_json(k, &bad).unwrap_err();
    assert!(e.contains("spec.groups[0].rules[0].for"), "{e}");

    // The ConfigMap is the dashboard.
    let cm: Value = get_json(k, "configmap", "vaultgram-dashboard");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "{cm}");
    let live: Value = serde_json::from_str(cm["data"]["vaultgram.json"].as_str().unwrap()).unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("monitoring/dashboard.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(live, file, "the ConfigMap is not monitoring/dashboard.json");
    eprintln!(
        "kubernetes: k8s/monitoring applied against prometheus-operator CRDs: {} alerts, ServiceMonitor on port {port}, dashboard ConfigMap; second apply: no change; malformed rule refused",
        alerts.len()
    );
}

/// One object of namespace `vaultgram`, as JSON.
fn get_json(k: &KubeApi, kind: &str, name: &str) -> Value {
    serde_json::from_slice(&k.ok(&["get", kind, name, "-n", NS, "-o", "json"])).unwrap()
}

/// A Pod made from the Deployment's template (no controllers run here).
fn pod_from_template(k: &KubeApi, name: &str, edit: impl FnOnce(&mut Value)) -> Value {
    let d: Value = get_json(k, "deployment", "vaultgram");
    let t = &d["spec"]["template"];
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": t["metadata"]["labels"]},
        "spec": t["spec"],
    });
    edit(&mut pod);
    pod
}

fn apply_json(k: &KubeApi, v: &Value) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("obj.json");
    std::fs::write(&f, v.to_string()).unwrap();
    let out = k.kubectl(&["apply", "--server-side", "-f", f.to_str().unwrap()]);
    if out.status.success() {
        Ok(())
    } else {
        Err(stderr(&out))
    }
}

fn can_i_matrix(env: &Env) {
    let k = env.kube();
    {
        let _turn = namespace_turn();
        apply_base(k);
    }
    k.ok(&[
        "create",
        "namespace",
        "other",
        "--dry-run=client",
        "-o",
        "name",
    ]);
    let _ = k.kubectl(&["create", "namespace", "other"]);
    let sa = "system:serviceaccount:vaultgram:vaultgram";
    // (verb, resource, namespace, allowed): what the confinement check
    // reads, and what a stolen pod token must not reach.
    let matrix: &[(&str, &str, &str, bool)] = &[
        ("get", "pods", NS, true),
        ("get", "networkpolicies.networking.k8s.io", NS, true),
        ("list", "networkpolicies.networking.k8s.io", NS, true),
        ("list", "pods", NS, false),
        ("watch", "pods", NS, false),
        ("create", "pods", NS, false),
        ("delete", "pods", NS, false),
        ("create", "pods/exec", NS, false),
        ("get", "pods/log", NS, false),
        ("get", "secrets", NS, false),
        ("list", "secrets", NS, false),
        ("get", "configmaps", NS, false),
        ("create", "serviceaccounts/token", NS, false),
        ("create", "tokenreviews.authentication.k8s.io", "", false),
        ("update", "networkpolicies.networking.k8s.io", NS, false),
        ("delete", "networkpolicies.networking.k8s.io", NS, false),
        ("patch", "roles.rbac.authorization.k8s.io", NS, false),
        (
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            NS,
            false,
        ),
        ("get", "pods", "other", false),
        ("list", "networkpolicies.networking.k8s.io", "other", false),
        ("get", "secrets", "kube-system", false),
        ("list", "namespaces", "", false),
        ("list", "nodes", "", false),
    ];
    let mut table = String::new();
    let mut wrong = Vec::new();
    for &(verb, resource, ns, want) in matrix {
        // `pods/exec` would be read as the pod named "exec".
        let (kind, sub) = resource.split_once('/').unwrap_or((resource, ""));
        let mut args = vec!["auth", "can-i", verb, kind, "--as", sa];
        if !sub.is_empty() {
            args.extend(["--subresource", sub]);
        }
        if ns.is_empty() {
            args.push("--all-namespaces");
        } else {
            args.extend(["-n", ns]);
        }
        let out = k.kubectl(&args);
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            got == "yes" || got == "no",
            "can-i {args:?}: {got} {}",
            stderr(&out)
        );
        let allowed = got == "yes";
        table.push_str(&format!(
            "  {verb:<7} {resource:<40} {:<12} {}\n",
            if ns.is_empty() { "(cluster)" } else { ns },
            if allowed { "allowed" } else { "denied" }
        ));
        if allowed != want {
            wrong.push(format!("{verb} {resource} in {ns}: {got}, want {want}"));
        }
    }
    eprintln!("kubernetes: can-i matrix for {sa}:\n{table}");
    assert!(wrong.is_empty(), "{wrong:?}\n{table}");
    // The same answers from the API itself, with the SA's own token.
    let token = k.token(NS, "vaultgram", None);
    let http = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(k.ca.cert_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for (path, want) in [
        (
            format!("/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies"),
            200,
        ),
        (format!("/api/v1/namespaces/{NS}/secrets"), 403),
        ("/api/v1/namespaces/other/pods/x".to_string(), 403),
    ] {
        let r = http
            .get(format!("{}{path}", k.url()))
            .bearer_auth(&token)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{path}");
    }
}

fn vault_login(env: &Env) {
    let c = env.cluster();
    let k = env.kube();
    {
        let _turn = namespace_turn();
        apply_base(k);
    }
    let dir = tempfile::Builder::new()
        .prefix("vaultgram-k8s-login-")
        .tempdir()
        .unwrap();
    // Vault's own ServiceAccount reviews tokens (system:auth-delegator, bound
    // by k8s/base); in a cluster Vault reads it from its pod.
    let reviewer = dir.path().join("reviewer.jwt");
    write_private(&reviewer, k.token(NS, "vault", None).as_bytes());
    let mount = "kubernetes";
    let apply_sh = || {
        let out = c
            .apply_sh()
            .env("VAULTGRAM_K8S_HOST", k.url())
            .env("VAULTGRAM_K8S_CA_CERT", &k.ca_path)
            .env("VAULTGRAM_K8S_REVIEWER_JWT_FILE", &reviewer)
            // Short-lived on purpose: renewals and re-logins within seconds.
            .env("VAULTGRAM_K8S_TOKEN_PERIOD", "0")
            .env("VAULTGRAM_K8S_TOKEN_TTL", "6s")
            .env("VAULTGRAM_K8S_TOKEN_MAX_TTL", "15s")
            .output()
            .unwrap();
        assert!(out.status.success(), "apply.sh: {}", stderr(&out));
        stderr(&out)
    };
    let log = apply_sh();
    assert!(
        log.contains("kubernetes role auth/kubernetes/role/vaultgram written"),
        "{log}"
    );
    let again = apply_sh();
    assert!(
        again.contains("auth method kubernetes/ (kubernetes) already enabled"),
        "{again}"
    );

    // The pod's projected token: audience "vault", as k8s/base/vaultgram.yaml sets it.
    let jwt_file = dir.path().join("token");
    let jwt = k.token(NS, "vaultgram", Some("vault"));
    write_private(&jwt_file, jwt.as_bytes());
    let mut v = env.config().vault;
    v.auth.method = AuthMethod::Kubernetes;
    v.auth.mount = mount.into();
    v.auth.role = Some("vaultgram".into());
    v.auth.jwt_file = jwt_file.clone();
    v.auth.token = None;
    v.auth.token_file = None;
    let t0 = Instant::now();
    let mgr = env
        .rt
        .block_on(TokenManager::login(&v))
        .expect("kubernetes login");
    let login_ms = t0.elapsed().as_millis();
    let info = env.rt.block_on(mgr.current().lookup_self()).unwrap();
    assert!(
        info.policies.iter().any(|p| p == "vaultgram-broker"),
        "{:?}",
        info.policies
    );
    assert_eq!(
        info.meta.get("service_account_name").map(String::as_str),
        Some("vaultgram")
    );
    assert_eq!(
        info.meta
            .get("service_account_namespace")
            .map(String::as_str),
        Some(NS)
    );

    // Renewals and re-logins (TTL 6 s, max 15 s) while reading.
    let (reads, failures) = read_loop(env, &mgr, Duration::from_secs(32));
    let st = mgr.status();
    eprintln!(
        "kubernetes login: first login {login_ms} ms; {reads} reads, {} failed, {} renewals, {} re-logins",
        failures.len(),
        st.renewals,
        st.relogins
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(st.renewals >= 4, "{st:?}");
    assert!(st.relogins >= 2, "{st:?}");

    // Child tokens; the broker's token revoked from outside takes them
    // along, and the broker logs in again with the same projected token.
    let cfg = env.config();
    let tokens = OperatorTokens::new(mgr.clone());
    let alice = cfg.operator_by_name("alice").unwrap();
    let before = env.rt.block_on(tokens.for_operator(alice)).unwrap();
    env.rt.block_on(before.lookup_self()).expect("child works");
    let accessor = env
        .rt
        .block_on(mgr.current().lookup_self())
        .unwrap()
        .accessor;
    let (code, body) = c
        .vault_api(
            Method::POST,
            "auth/token/revoke-accessor",
            Some(&c.root_token),
            Some(json!({"accessor": accessor})),
        )
        .unwrap();
    assert_eq!(code, 204, "{body}");
    assert_eq!(
        err_text(env.rt.block_on(before.lookup_self())).0,
        ErrorKind::Denied
    );
    let gen = mgr.generation();
    env.rt
        .block_on(mgr.refresh(None))
        .expect("re-login after revocation");
    assert_eq!(mgr.generation(), gen + 1);
    let after = env.rt.block_on(tokens.for_operator(alice)).unwrap();
    assert!(!Arc::ptr_eq(&before, &after));
    env.rt
        .block_on(after.lookup_self())
        .expect("new child works");

    // Denied by Vault after the API server's review: another account, the
    // same name in another namespace, the API's own audience, a token of a
    // deleted account.
    let _ = k.kubectl(&["create", "namespace", "other"]);
    let _ = k.kubectl(&["create", "serviceaccount", "vaultgram", "-n", "other"]);
    let _ = k.kubectl(&["create", "serviceaccount", "intruder", "-n", NS]);
    // (No controller manager: no `default` account unless made.)
    let _ = k.kubectl(&["create", "serviceaccount", "other-app", "-n", NS]);
    let doomed = k.token(NS, "intruder", Some("vault"));
    let cases = [
        ("another account", k.token(NS, "other-app", Some("vault"))),
        (
            "namespace other",
            k.token("other", "vaultgram", Some("vault")),
        ),
        ("API audience", k.token(NS, "vaultgram", None)),
        ("forged signature", forge(&jwt)),
    ];
    for (what, token) in cases.iter() {
        write_private(&jwt_file, token.as_bytes());
        let (kind, msg) = err_text(env.rt.block_on(TokenManager::login(&v)));
        assert_eq!(kind, ErrorKind::Denied, "{what}: {msg}");
        assert!(
            !msg.contains(token.as_str()),
            "{what}: error text carries the JWT"
        );
    }
    k.ok(&["delete", "serviceaccount", "intruder", "-n", NS]);
    write_private(&jwt_file, doomed.as_bytes());
    let (kind, msg) = err_text(env.rt.block_on(TokenManager::login(&v)));
    assert_eq!(kind, ErrorKind::Denied, "deleted account: {msg}");
    // A missing token file is a set-up error naming the file.
    std::fs::remove_file(&jwt_file).unwrap();
    let (_, msg) = err_text(env.rt.block_on(TokenManager::login(&v)));
    assert!(
        msg.contains("service-account token") && msg.contains(&jwt_file.display().to_string()),
        "{msg}"
    );
    eprintln!(
        "kubernetes login: logins 1 + {} re-logins + 1 after revocation; {} renewals; 5 foreign tokens denied",
        st.relogins, st.renewals
    );
}

/// The token with its signature's last bytes changed.
fn forge(jwt: &str) -> String {
    let (head, sig) = jwt.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = sig.chars().collect();
    let n = sig.len();
    for c in &mut sig[n - 6..] {
        *c = if *c == 'A' { 'B' } else { 'A' };
    }
    format!("{head}.{}", sig.into_iter().collect::<String>())
}

/// The files a kubelet mounts for the pod's API access.
fn service_account_dir(k: &KubeApi, dir: &Path) -> PathBuf {
    let sa = dir.join("serviceaccount");
    std::fs::create_dir_all(&sa).unwrap();
    write_private(&sa.join("token"), k.token(NS, "vaultgram", None).as_bytes());
    std::fs::write(sa.join("ca.crt"), &k.ca.cert_pem).unwrap();
    std::fs::write(sa.join("namespace"), NS).unwrap();
    sa
}

fn in_pod_env(k: &KubeApi, pod: &str) -> Vec<(&'static str, String)> {
    vec![
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1".into()),
        ("KUBERNETES_SERVICE_PORT", k.port.to_string()),
        ("POD_NAME", pod.into()),
    ]
}

/// `vaultgram doctor --json` with `vars`: (exit code, the confinement check).
fn doctor(config: &Path, vars: &[(&str, String)]) -> (i32, Value) {
    let o = Command::new(env!("CARGO_BIN_EXE_vaultgram"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .args(["--config", config.to_str().unwrap(), "doctor", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("doctor JSON: {e}: {}", stderr(&o)));
    let check = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kubernetes.confinement")
        .cloned()
        .unwrap_or_else(|| panic!("no kubernetes.confinement in {v:#}"));
    (o.status.code().unwrap_or(-1), check)
}

/// `run` as in a pod; Err(log) when it exits instead of serving.
fn run_in_pod(
    env: &Env,
    name: &str,
    config_extra: &str,
    vars: &[(&str, String)],
) -> Result<(Broker, String), String> {
    let port = crate::common::process::free_port();
    let extra = config_extra.to_string();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Broker::start_full(
            env,
            name,
            |t| {
                let t = t.replace(
                    "listen = \"127.0.0.1:0\"",
                    &format!("listen = \"127.0.0.1:{port}\""),
                );
                format!("{t}\n[telegram]\nenabled = false\n{extra}")
            },
            |_| {},
            vars,
        )
    }));
    let mut b = match result {
        Ok(b) => b,
        Err(p) => {
            return Err(p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default())
        }
    };
    // `run` binds its socket before the confinement check, so an open
    // socket is not a start: it has started when it answers, and been
    // refused when it exits.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = b.ctl(&["--json", "/whoami"]);
        if String::from_utf8_lossy(&out.stdout).contains("\"ok\":true") {
            return Ok((b, format!("http://127.0.0.1:{port}")));
        }
        if b.proc.exited() {
            return Err(b.proc.log_text());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no reply to /whoami within 30 s:\n{}",
                b.proc.log_text()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get(url: &str) -> (u16, String) {
    let r = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(url)
        .send()
        .unwrap();
    let code = r.status().as_u16();
    (code, r.text().unwrap())
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        match f() {
            None => return,
            Some(s) => last = s,
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{what}: not within {limit:?}; last: {last}");
}

fn confinement(env: &Env) {
    let c = env.cluster();
    let k = env.kube();
    let _turn = namespace_turn();
    apply_base(k);
    let pod = "vaultgram-it-0";
    apply_json(k, &pod_from_template(k, pod, |_| {})).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("vaultgram-k8s-conf-")
        .tempdir()
        .unwrap();
    let sa = service_account_dir(k, dir.path());
    let extra = format!(
        "\n[kubernetes]\nrequire_confinement = true\nrecheck_secs = 10\nservice_account_dir = \"{}\"\n",
        sa.display()
    );
    let config = dir.path().join("doctor.toml");
    let base = std::fs::read_to_string(&c.config_path).unwrap();
    std::fs::write(
        &config,
        format!("{base}\n[telegram]\nenabled = false\n{extra}"),
    )
    .unwrap();
    let vars = in_pod_env(k, pod);

    // Outside a pod: nothing to check.
    let (_, check) = doctor(&config, &[]);
    assert_eq!(check["status"], "ok", "{check}");
    assert!(
        check["detail"].as_str().unwrap().contains("not in a pod"),
        "{check}"
    );

    // The manifests as applied: confined.
    let (code, check) = doctor(&config, &vars);
    assert_eq!(check["status"], "ok", "{check:#}");
    let data = &check["data"];
    let egress_by: Vec<&str> = data["egress_by"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        egress_by,
        ["default-deny-egress", "vaultgram-egress"],
        "{check:#}"
    );
    let allowed = data["allowed_egress"].to_string();
    for want in [
        "149.154.160.0/20 on 443/TCP",
        "pods [app.kubernetes.io/name=vault] of this namespace on 8200/TCP",
        "53/UDP",
    ] {
        assert!(allowed.contains(want), "{want} not in {allowed}");
    }
    eprintln!(
        "kubernetes: confinement as applied: doctor exit {code}: {}",
        check["detail"]
    );

    let (broker, base_url) =
        run_in_pod(env, "k8s-confined", &extra, &vars).expect("run starts when confined");
    let ready = |want_code: u16, want_state: &'static str| {
        let url = base_url.clone();
        move || {
            let (code, body) = get(&format!("{url}/readyz"));
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            let metrics = get(&format!("{url}/metrics")).1;
            let gauge = format!("vaultgram_confinement{{state=\"{want_state}\"}} 1");
            if code == want_code
                && v["confinement"]["state"] == want_state
                && metrics.contains(&gauge)
            {
                None
            } else {
                Some(format!("{code} {body}"))
            }
        }
    };
    wait_for(
        "/readyz ready and confined",
        Duration::from_secs(20),
        ready(200, "ok"),
    );

    // Both egress policies gone: the pod may connect anywhere.
    let saved = k.ok(&[
        "get",
        "networkpolicy",
        "default-deny-egress",
        "vaultgram-egress",
        "-n",
        NS,
        "-o",
        "yaml",
    ]);
    k.ok(&[
        "delete",
        "networkpolicy",
        "default-deny-egress",
        "vaultgram-egress",
        "-n",
        NS,
    ]);
    let (code, check) = doctor(&config, &vars);
    assert_eq!(
        (code, check["status"].as_str()),
        (2, Some("fail")),
        "{check:#}"
    );
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("no NetworkPolicy selects the pod for Egress"),
        "{check}"
    );
    // The running broker notices on its next check; readiness fails.
    wait_for(
        "/readyz failing on lost confinement",
        Duration::from_secs(30),
        ready(503, "fail"),
    );
    let refused = run_in_pod(env, "k8s-unconfined", &extra, &vars)
        .map(|_| ())
        .unwrap_err();
    assert!(
        refused.contains("kubernetes.require_confinement: refusing to start")
            && refused.contains("no NetworkPolicy selects the pod for Egress"),
        "{refused}"
    );
    // Without require_confinement the same pod starts, and says why it should not.
    let (lax, lax_url) = run_in_pod(
        env,
        "k8s-lax",
        &extra.replace("require_confinement = true", "require_confinement = false"),
        &vars,
    )
    .expect("run starts without require_confinement");
    let (code, body) = get(&format!("{lax_url}/readyz"));
    assert!(
        code == 200 && body.contains("\"state\":\"fail\""),
        "{code} {body}"
    );
    drop(lax);
    let restore = dir.path().join("egress.yaml");
    std::fs::write(&restore, &saved).unwrap();
    k.ok(&["create", "-f", restore.to_str().unwrap()]);
    wait_for(
        "/readyz ready again",
        Duration::from_secs(30),
        ready(200, "ok"),
    );

    // A policy that opens all egress: flagged, not refused.
    let open = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-all-egress", "namespace": NS},
        "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "vaultgram"}},
                 "policyTypes": ["Egress"], "egress": [{}]}
    });
    apply_json(k, &open).unwrap();
    let (code, check) = doctor(&config, &vars);
    assert_eq!(
        (code, check["status"].as_str()),
        (1, Some("warn")),
        "{check:#}"
    );
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("allow-all-egress allows any destination on all ports"),
        "{check}"
    );
    let wide = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-all-egress", "namespace": NS},
        "spec": {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "vaultgram"}},
                 "policyTypes": ["Egress"],
                 "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": 443}]}]}
    });
    apply_json(k, &wide).unwrap();
    let (_, check) = doctor(&config, &vars);
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("0.0.0.0/0 on 443/TCP: every address"),
        "{check}"
    );
    k.ok(&["delete", "networkpolicy", "allow-all-egress", "-n", NS]);

    // The ServiceAccount without its Role: a clear error, no crash.
    k.ok(&["delete", "rolebinding", "vaultgram-confinement", "-n", NS]);
    let (code, check) = doctor(&config, &vars);
    assert_eq!(
        (code, check["status"].as_str()),
        (2, Some("fail")),
        "{check:#}"
    );
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("cannot read pod vaultgram/vaultgram-it-0: forbidden")
            && detail.contains("vaultgram-confinement"),
        "{detail}"
    );
    let refused = run_in_pod(env, "k8s-no-role", &extra, &vars)
        .map(|_| ())
        .unwrap_err();
    assert!(
        refused.contains("refusing to start") && refused.contains("forbidden"),
        "{refused}"
    );
    // Only the Pod read granted (list of NetworkPolicies still missing).
    k.ok(&[
        "create",
        "role",
        "pods-only",
        "--verb=get",
        "--resource=pods",
        "-n",
        NS,
    ]);
    k.ok(&[
        "create",
        "rolebinding",
        "pods-only",
        "--role=pods-only",
        "--serviceaccount=vaultgram:vaultgram",
        "-n",
        NS,
    ]);
    let (_, check) = doctor(&config, &vars);
    assert!(
        check["detail"]
            .as_str()
            .unwrap()
            .contains("cannot read NetworkPolicies in namespace vaultgram: forbidden"),
        "{check}"
    );
    k.ok(&["delete", "rolebinding,role", "pods-only", "-n", NS]);
    apply_base(k);
    let (_, check) = doctor(&config, &vars);
    assert_eq!(check["status"], "ok", "{check:#}");
    drop(broker);
    k.ok(&[
        "delete",
        "pod",
        pod,
        "-n",
        NS,
        "--grace-period=0",
        "--wait=false",
    ]);
}
