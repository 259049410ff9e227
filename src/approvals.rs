//! The two-person rule: commands in `approvals.required` wait in etcd
//! (with a lease of `approvals.ttl_secs`, holding no secret value) for a
//! second admin's `/approve ID CODE`.
//!
//! # Flow
//!
//! 1. The dispatcher calls [`Approvals::gate`] for a gated command. If the
//!    requester holds a one-time *grant* for exactly this command line, it
//!    is consumed (compare-and-delete) and the command runs. Otherwise a
//!    pending request is filed and the command stops with
//!    `approval_required` and the request's ID.
//! 2. `/approve ID CODE` (another admin): the approver's TOTP code is
//!    checked by Vault's TOTP engine (`totp/code/<totp_key>`, with the
//!    broker's own token: operators' child tokens cannot read or validate
//!    codes). Then the pending key is taken atomically (a transaction that
//!    compares its revision and deletes it), so two approvals cannot both
//!    win, and the stored line is parsed again and executed with the
//!    **requester's** identity: its own child token, its own policies.
//! 3. `/deny ID` cancels (the requester may cancel their own request);
//!    `/pending` lists what waits.
//!
//! **Commands whose reply is a secret** (`/panel show --reveal`) are not
//! executed by `/approve`: the reply would go to the approving admin, and
//! the second admin must not see the secret they vouch for — the rule is
//! that *two* people agree that *the requester* may see it. Instead the
//! approval stores a one-time grant for the requester and that exact line,
//! valid for what is left of the request's TTL; the requester re-runs the
//! line and [`Approvals::gate`] consumes the grant.
//!
//! # etcd layout (under `etcd.prefix`, e.g. `/vaultgram/`)
//!
//! - `approvals/pending/<ID>` — the request ([`Request`] JSON), attached to
//!   its own lease of `approvals.ttl_secs`: it disappears when it expires,
//!   and it survives restarts and failover because it lives only in etcd.
//! - `approvals/log/<ID>` — the same request plus its status (`pending`,
//!   `approved`, `denied`, `expired`), on a shared 7-day lease, so an
//!   expired request can be told from an unknown one.
//! - `approvals/grants/<requester>/<ID>` — a one-time grant ([`Grant`]
//!   JSON), leased with the rest of the request's TTL.
//! - `leases/approvals-log` — the shared lease of the log.
//!
//! None of these holds a secret: a gated command line carries no value
//! (commands whose input is secret are refused by the gate), and the TOTP
//! code is never stored or logged.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::config::{Config, Operator, Role};
use crate::context::{AuditTrail, CommandError, CommandResult, Ctx, Reply};
use crate::error::ErrorKind;
use crate::etcd::{unix_secs, Entry, Etcd, EtcdError, SharedLease};
use crate::notify::Notifier;
use crate::records::audit::{now_rfc3339, AuditRecord};
use crate::text::escape_line;
use crate::transport::Transport;
use crate::vault::VaultError;

/// How long the approvals log remembers a request.
const LOG_RETENTION: Duration = Duration::from_secs(7 * 86_400);
const LOG_LEASE_REUSE: Duration = Duration::from_secs(86_400);
/// A grant for a secret-reply command is valid at least this long.
const MIN_GRANT_SECS: u64 = 10;
/// Wrong TOTP codes one request takes before it is cancelled: a code is
/// 6 digits, so guessing must stay hopeless.
pub const MAX_WRONG_CODES: u32 = 3;

/// A request waiting for approval, as stored in etcd. No secret value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    pub requester: String,
    /// The command's name (`transit rotate`).
    pub command: String,
    pub target: Option<String>,
    /// The canonical command line (`crate::command::prepare`): what
    /// `/pending` shows and `/approve` runs.
    pub line: String,
    /// The request id of the command that filed it (audit trail).
    pub request_id: String,
    pub transport: String,
    pub created_at: String,
    /// Unix seconds.
    pub expires_at: u64,
    /// The lease the request was filed with.
    pub ttl_secs: u64,
    /// Wrong `/approve` codes so far ([`MAX_WRONG_CODES`] cancel it).
    #[serde(default)]
    pub wrong_codes: u32,
}

impl Request {
    fn seconds_left(&self) -> u64 {
        self.expires_at.saturating_sub(unix_secs())
    }
}

/// `approvals/log/<ID>`: a request and what became of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LogEntry {
    #[serde(flatten)]
    request: Request,
    /// `pending`, `approved`, `denied`, `expired`.
    status: String,
    #[serde(default)]
    by: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
}

/// `approvals/grants/<requester>/<ID>`: the requester may run `line` once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub requester: String,
    pub line: String,
    pub approved_by: String,
    pub expires_at: u64,
}

/// What an approval leads to.
pub enum Approval {
    /// A one-time grant: the requester runs the command itself.
    Granted(Reply),
    /// A request the dispatcher runs now, as its requester.
    Run(Box<ApprovedRun>),
}

/// An approved request, taken from the store, parsed and checked again.
pub struct ApprovedRun {
    pub request: Request,
    pub cmd: Command,
    /// Who approved it.
    pub approver: String,
}

impl ApprovedRun {
    /// The operator the request runs as.
    pub fn requester<'c>(&self, cfg: &'c Config) -> Result<&'c Operator, CommandError> {
        find_operator(cfg, &self.request.requester)
    }
}

pub struct Approvals {
    etcd: Etcd,
    prefix: String,
    ttl_secs: u64,
    max_pending: u32,
    log_lease: SharedLease,
    /// `approvals.notify`: admins hear of new requests, requesters of
    /// their outcome, in Telegram.
    notifier: Option<Notifier>,
    admins: Vec<String>,
}

/// How long an outcome message may wait for a Telegram leader.
const OUTCOME_NOTICE_TTL: u64 = 86_400;

/// A short random ID (8 hex digits) that an admin can type.
fn new_id() -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// IDs are ours (hex); anything else never reaches an etcd key.
fn check_id(id: &str) -> Result<(), CommandError> {
    if (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(CommandError::invalid(
            "invalid request ID: expected the hex ID shown by the request or /pending",
        ))
    }
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8], what: &str) -> Result<T, CommandError> {
    serde_json::from_slice(bytes)
        .map_err(|_| CommandError::unavailable(format!("unreadable {what} record in etcd")))
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain structs of strings and numbers: serialisation cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

impl Approvals {
    pub fn new(etcd: Etcd, cfg: &Config) -> Approvals {
        Approvals {
            etcd: etcd.clone(),
            prefix: format!("{}approvals/", cfg.etcd.prefix),
            ttl_secs: cfg.approvals.ttl_secs,
            max_pending: cfg.approvals.max_pending_per_operator,
            log_lease: SharedLease::new(
                format!("{}leases/approvals-log", cfg.etcd.prefix),
                LOG_RETENTION,
                LOG_LEASE_REUSE,
            ),
            notifier: cfg
                .approvals
                .notify
                .then(|| Notifier::new(etcd.clone(), &cfg.etcd.prefix)),
            admins: cfg
                .operators
                .iter()
                .filter(|o| o.role == Role::Admin)
                .map(|o| o.name.clone())
                .collect(),
        }
    }

    /// Queue records (and their lease) telling `to` about `req`; none
    /// when notifications are off.
    async fn notices(
        &self,
        kind: &str,
        to: &[&str],
        text: &str,
        expires_at: u64,
    ) -> Result<(Vec<(String, Vec<u8>)>, i64), CommandError> {
        match &self.notifier {
            Some(n) if !to.is_empty() => {
                Ok((n.records(kind, to, text, expires_at), n.lease().await?))
            }
            _ => Ok((Vec::new(), 0)),
        }
    }

    /// What the requester is told when `req` ends with `status`.
    fn outcome_text(&self, req: &Request, status: &str, by: &str) -> String {
        let what = format!("your request {} ({})", req.id, escape_line(&req.line));
        match status {
            "approved" => {
                let grant = Command::parse(&req.line).is_ok_and(|c| c.reply_is_secret());
                if grant {
                    format!(
                        "{what} was approved by {by}: send the command again within {} s to get its reply (once)",
                        req.seconds_left().max(MIN_GRANT_SECS)
                    )
                } else {
                    format!("{what} was approved by {by} and runs now as you")
                }
            }
            "expired" => format!("{what} expired without approval"),
            other => format!("{what} was {other} by {by}"),
        }
    }

    fn pending_key(&self, id: &str) -> String {
        format!("{}pending/{id}", self.prefix)
    }
    fn log_key(&self, id: &str) -> String {
        format!("{}log/{id}", self.prefix)
    }
    fn grants_prefix(&self, requester: &str) -> String {
        format!("{}grants/{requester}/", self.prefix)
    }
    /// `slots/<requester>/<n>`: one key per pending request of a requester,
    /// on the request's lease, created in the same transaction as the
    /// request. At most `max_pending` slots exist, so the cap holds even
    /// when two replicas file at once.
    fn slots_prefix(&self, requester: &str) -> String {
        format!("{}slots/{requester}/", self.prefix)
    }

    /// Lets `cmd` through when an approval grants it, otherwise files a
    /// pending request for its canonical `line` and answers
    /// `approval_required`.
    pub async fn gate(&self, ctx: &Ctx<'_>, cmd: &Command, line: &str) -> Result<(), CommandError> {
        if self.take_grant(&ctx.op.name, line).await? {
            tracing::info!(
                request_id = %ctx.request_id,
                operator = %ctx.op.name,
                command = %cmd.name(),
                "approval grant used"
            );
            return Ok(());
        }
        if line.is_empty() || cmd.input_is_secret() {
            // Never store a line that carries a value.
            return Err(CommandError::invalid(format!(
                "/{} cannot wait for approval: its line carries a secret",
                cmd.name()
            )));
        }
        let log_lease = self.log_lease.get(&self.etcd).await?;
        for _ in 0..5 {
            let Some(slot) = self.free_slot(&ctx.op.name).await? else {
                return Err(CommandError::conflict(format!(
                    "{} has {} requests waiting, the most allowed (approvals.max_pending_per_operator); wait for them or cancel one with /deny ID",
                    ctx.op.name, self.max_pending
                )));
            };
            let id = new_id();
            let req = Request {
                id: id.clone(),
                requester: ctx.op.name.clone(),
                command: cmd.name(),
                target: cmd.target(),
                line: line.to_string(),
                request_id: ctx.request_id.to_string(),
                transport: ctx.transport.as_str().to_string(),
                created_at: now_rfc3339(),
                expires_at: unix_secs() + self.ttl_secs,
                ttl_secs: self.ttl_secs,
                wrong_codes: 0,
            };
            let log = LogEntry {
                request: req.clone(),
                status: "pending".into(),
                by: None,
                updated_at: None,
            };
            let lease = self.etcd.lease_grant(self.ttl_secs).await?;
            let (pk, lk) = (self.pending_key(&id), self.log_key(&id));
            let sk = format!("{}{slot}", self.slots_prefix(&ctx.op.name));
            let (pv, lv) = (encode(&req), encode(&log));
            // Every admin who may approve it hears of it, in the same
            // transaction: a filed request is always announced, once.
            let approvers: Vec<&str> = self
                .admins
                .iter()
                .map(String::as_str)
                .filter(|a| *a != ctx.op.name)
                .collect();
            let text = format!(
                "approval request {id}: {} asks to run {}{} (expires in {} s)\napprove: /approve {id} CODE\ndeny: /deny {id}",
                req.requester,
                escape_line(&req.line),
                req.target
                    .as_deref()
                    .map(|t| format!(" on {}", escape_line(t)))
                    .unwrap_or_default(),
                self.ttl_secs
            );
            let (notes, note_lease) = self
                .notices("approval_request", &approvers, &text, req.expires_at)
                .await?;
            let puts = |log_lease| {
                let mut p = vec![
                    (pk.as_str(), pv.as_slice(), lease),
                    (lk.as_str(), lv.as_slice(), log_lease),
                    (sk.as_str(), id.as_bytes(), lease),
                ];
                p.extend(
                    notes
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_slice(), note_lease)),
                );
                p
            };
            let created = match self.etcd.create_if_absent(&puts(log_lease)).await {
                Err(EtcdError::NotFound(_)) => {
                    // The shared log lease vanished: take a fresh one.
                    self.log_lease.invalidate();
                    let log_lease = self.log_lease.get(&self.etcd).await?;
                    self.etcd.create_if_absent(&puts(log_lease)).await?
                }
                other => other?,
            };
            if created {
                tracing::info!(
                    request_id = %ctx.request_id,
                    approval = %id,
                    operator = %ctx.op.name,
                    command = %req.command,
                    "approval requested"
                );
                return Err(CommandError::new(
                    ErrorKind::ApprovalRequired,
                    format!(
                        "request {id} waits for a second admin: /approve {id} CODE (expires in {} s)",
                        self.ttl_secs
                    ),
                ));
            }
            // An ID collision, or another request took the slot: the
            // unused lease expires by itself; try again.
            self.revoke_quietly(lease).await;
        }
        Err(CommandError::unavailable(
            "could not file the approval request (concurrent requests); try again",
        ))
    }

    /// The lowest free slot number of `requester`, if any is free.
    async fn free_slot(&self, requester: &str) -> Result<Option<u32>, CommandError> {
        let prefix = self.slots_prefix(requester);
        let taken: std::collections::BTreeSet<u32> = self
            .etcd
            .list_prefix(&prefix, i64::from(self.max_pending) + 1, false)
            .await?
            .iter()
            .filter_map(|e| e.key.strip_prefix(&prefix)?.parse().ok())
            .collect();
        Ok((0..self.max_pending).find(|n| !taken.contains(n)))
    }

    /// Consumes the requester's grant for exactly `line`, if there is one.
    async fn take_grant(&self, requester: &str, line: &str) -> Result<bool, CommandError> {
        let grants = self
            .etcd
            .list_prefix(&self.grants_prefix(requester), 100, false)
            .await?;
        for e in grants {
            let Ok(g) = serde_json::from_slice::<Grant>(&e.value) else {
                continue;
            };
            if g.requester == requester
                && g.line == line
                && self
                    .etcd
                    .delete_if_unchanged(&e.key, e.mod_revision, None)
                    .await?
            {
                self.revoke_quietly(e.lease).await;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The pending request `id`, or why there is none.
    async fn pending(&self, ctx: &Ctx<'_>, id: &str) -> Result<(Request, Entry), CommandError> {
        if let Some(e) = self.etcd.get_entry(&self.pending_key(id)).await? {
            return Ok((decode(&e.value, "approval")?, e));
        }
        let Some(e) = self.etcd.get_entry(&self.log_key(id)).await? else {
            return Err(CommandError::not_found(format!(
                "no pending request {id} (see /pending)"
            )));
        };
        let log: LogEntry = decode(&e.value, "approval log")?;
        let by = log.by.as_deref().unwrap_or("?");
        match log.status.as_str() {
            "pending" | "expired" => {
                if log.status == "pending" {
                    self.mark_expired(ctx.svc.audit.as_ref(), ctx.transport, &e, &log)
                        .await;
                }
                Err(CommandError::not_found(format!(
                    "request {id} expired: nobody approved it within {} s; run the command again to file a new request",
                    log.request.ttl_secs
                )))
            }
            "approved" => Err(CommandError::conflict(format!(
                "request {id} was already approved by {by}"
            ))),
            "denied" => Err(CommandError::conflict(format!(
                "request {id} was denied by {by}"
            ))),
            _ => Err(CommandError::not_found(format!("no pending request {id}"))),
        }
    }

    /// Records an expiry once (whoever notices first wins the
    /// transaction): the log entry becomes `expired`, one audit record.
    async fn mark_expired(
        &self,
        audit: &dyn AuditTrail,
        transport: Transport,
        e: &Entry,
        log: &LogEntry,
    ) {
        let mut done = log.clone();
        done.status = "expired".into();
        done.updated_at = Some(now_rfc3339());
        let r = &log.request;
        let (notes, note_lease) = self
            .notices(
                "approval_outcome",
                &[r.requester.as_str()],
                &self.outcome_text(r, "expired", "-"),
                unix_secs() + OUTCOME_NOTICE_TTL,
            )
            .await
            .unwrap_or_default();
        let value = encode(&done);
        let mut puts = vec![(e.key.as_str(), value.as_slice(), e.lease)];
        puts.extend(
            notes
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice(), note_lease)),
        );
        if self
            .etcd
            .commit_if_unchanged(&e.key, e.mod_revision, false, &puts)
            .await
            .unwrap_or(false)
        {
            let r = &log.request;
            audit
                .record(AuditRecord::new(
                    &r.id,
                    &r.requester,
                    transport,
                    &r.command,
                    r.target.clone(),
                    "expired",
                ))
                .await;
        }
    }

    /// Finds requests whose lease ran out unseen and records their expiry
    /// (`run` calls this periodically, so expiry is audited even when
    /// nobody tries to approve). Returns how many it recorded.
    pub async fn sweep_expired(&self, audit: &dyn AuditTrail, transport: Transport) -> usize {
        let Ok(entries) = self
            .etcd
            .list_prefix(&format!("{}log/", self.prefix), 1000, false)
            .await
        else {
            return 0;
        };
        let mut n = 0;
        for e in entries {
            let Ok(log) = decode::<LogEntry>(&e.value, "approval log") else {
                continue;
            };
            if log.status != "pending" {
                continue;
            }
            if let Ok(None) = self
                .etcd
                .get_entry(&self.pending_key(&log.request.id))
                .await
            {
                self.mark_expired(audit, transport, &e, &log).await;
                n += 1;
            }
        }
        n
    }

    /// Takes the pending request (compare revision, delete) and records
    /// `status` in the log, in one transaction. `false`: someone else took
    /// it, or it expired, meanwhile.
    async fn take(
        &self,
        req: &Request,
        pending: &Entry,
        status: &str,
        by: &str,
    ) -> Result<bool, CommandError> {
        let mod_revision = pending.mod_revision;
        let log = encode(&LogEntry {
            request: req.clone(),
            status: status.into(),
            by: Some(by.to_string()),
            updated_at: Some(now_rfc3339()),
        });
        let (pk, lk) = (self.pending_key(&req.id), self.log_key(&req.id));
        let lease = self.log_lease.get(&self.etcd).await?;
        // The requester hears of the outcome (unless they cancelled it
        // themselves), in the same transaction.
        let to: Vec<&str> = if by == req.requester {
            vec![]
        } else {
            vec![req.requester.as_str()]
        };
        let (notes, note_lease) = self
            .notices(
                "approval_outcome",
                &to,
                &self.outcome_text(req, status, by),
                unix_secs() + OUTCOME_NOTICE_TTL,
            )
            .await?;
        let puts = |lease| {
            let mut p = vec![(lk.as_str(), log.as_slice(), lease)];
            p.extend(
                notes
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice(), note_lease)),
            );
            p
        };
        let r = match self
            .etcd
            .commit_if_unchanged(&pk, mod_revision, true, &puts(lease))
            .await
        {
            Err(EtcdError::NotFound(_)) => {
                self.log_lease.invalidate();
                if let Some(n) = &self.notifier {
                    n.lease_lost();
                }
                let lease = self.log_lease.get(&self.etcd).await?;
                self.etcd
                    .commit_if_unchanged(&pk, mod_revision, true, &puts(lease))
                    .await?
            }
            other => other?,
        };
        if r {
            // The request's own lease has nothing left to expire.
            self.revoke_quietly(pending.lease).await;
        }
        Ok(r)
    }

    async fn revoke_quietly(&self, lease: i64) {
        if lease != 0 {
            if let Err(e) = self.etcd.lease_revoke(lease).await {
                tracing::debug!(error = %e, "lease not revoked (it expires by itself)");
            }
        }
    }

    /// `/approve ID CODE`.
    ///
    /// Checks the approver and the code and takes the request. A command
    /// with a secret reply becomes a one-time grant for the requester (the
    /// approver must not see the secret); any other is returned for the
    /// dispatcher to run as the requester, then handed to [`Self::ran`].
    pub async fn approve(
        &self,
        ctx: &Ctx<'_>,
        id: &str,
        code: &str,
    ) -> Result<Approval, CommandError> {
        check_id(id)?;
        let approver = ctx.op;
        if approver.role != Role::Admin {
            return Err(CommandError::denied("only admins approve requests"));
        }
        let (req, entry) = self.pending(ctx, id).await?;
        if req.requester == approver.name {
            return Err(CommandError::denied(format!(
                "you cannot approve your own request {id}: a second admin must"
            )));
        }
        let Some(totp_key) = approver.totp_key.as_deref() else {
            return Err(CommandError::denied(format!(
                "operator {} has no TOTP key configured (operators[].totp_key)",
                approver.name
            )));
        };
        let valid = match ctx
            .svc
            .broker
            .current()
            .totp_validate(crate::vault::totp::MOUNT, totp_key, code)
            .await
        {
            Ok(v) => v,
            // A code Vault refuses (used before) is a failed attempt too:
            // replaying codes must not be a free way to keep guessing.
            Err(VaultError::Denied(m)) if m.contains("already used") => false,
            Err(e) => return Err(totp_error(e, &approver.name, totp_key)),
        };
        if !valid {
            return Err(self.wrong_code(ctx, &req, &entry).await);
        }
        let requester = find_operator(ctx.cfg(), &req.requester)?;
        let cmd = Command::parse(&req.line).map_err(|e| {
            CommandError::invalid(format!(
                "request {id} no longer parses ({e}); it cannot run"
            ))
        })?;
        // The stored line went through the effect check when it was filed;
        // check again, so that nothing stored elsewhere runs ungated paths.
        crate::effect::classify(&cmd, &ctx.cfg().vault.kv_mount)?;
        if !cmd.allowed_for(requester.role)
            || matches!(
                cmd,
                Command::Approve { .. } | Command::Deny { .. } | Command::Pending
            )
        {
            return Err(CommandError::denied(format!(
                "/{} is not available to {}",
                cmd.name(),
                requester.name
            )));
        }
        if !self.take(&req, &entry, "approved", &approver.name).await? {
            return Err(CommandError::conflict(format!(
                "request {id} was approved, denied or expired meanwhile"
            )));
        }
        let name = cmd.name();
        let target = cmd.target();
        if cmd.reply_is_secret() {
            // The approver must not see the secret: grant the requester one run.
            let secs = req.seconds_left().max(MIN_GRANT_SECS);
            let grant = Grant {
                id: req.id.clone(),
                requester: req.requester.clone(),
                line: req.line.clone(),
                approved_by: approver.name.clone(),
                expires_at: unix_secs() + secs,
            };
            let lease = self.etcd.lease_grant(secs).await?;
            self.etcd
                .put_leased(
                    &format!("{}{}", self.grants_prefix(&req.requester), req.id),
                    encode(&grant),
                    lease,
                )
                .await?;
            audit_request(ctx, &req, "approved", &approver.name).await;
            return Ok(Approval::Granted(
                Reply::text(format!(
                    "approved: {} may now run {} once within {secs} s",
                    req.requester,
                    escape_line(&req.line)
                ))
                .with_data(serde_json::json!({
                    "id": req.id, "requester": req.requester, "command": name,
                    "target": target, "grant": true, "expires_in": secs,
                })),
            ));
        }
        Ok(Approval::Run(Box::new(ApprovedRun {
            request: req,
            cmd,
            approver: approver.name.clone(),
        })))
    }

    /// After the dispatcher ran an approved request: its audit record, and
    /// the approver's reply (the requester's result, headed by what ran).
    pub async fn ran(
        &self,
        ctx: &Ctx<'_>,
        run: &ApprovedRun,
        result: CommandResult,
    ) -> CommandResult {
        let req = &run.request;
        let name = run.cmd.name();
        let target = run.cmd.target();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind.as_str(),
        };
        audit_request(ctx, req, outcome, &run.approver).await;
        match result {
            Ok(reply) => {
                let head = format!(
                    "approved {}: ran {} as {}",
                    req.id,
                    escape_line(&req.line),
                    req.requester
                );
                let text = if reply.as_str().is_empty() {
                    head
                } else {
                    format!("{head}\n{}", reply.as_str())
                };
                let data = serde_json::json!({
                    "id": req.id, "requester": req.requester, "command": name,
                    "target": target, "grant": false, "result": reply.data,
                });
                let out = if reply.secret {
                    Reply::secret(text)
                } else {
                    Reply::text(text)
                };
                Ok(out.with_data(data))
            }
            Err(e) => Err(CommandError::new(
                e.kind,
                format!(
                    "approved {}, but /{name} as {} failed: {}",
                    req.id, req.requester, e.message
                ),
            )),
        }
    }

    /// A wrong code for `req`: counted on the request itself (compare and
    /// swap); the last allowed wrong code cancels it.
    async fn wrong_code(&self, ctx: &Ctx<'_>, req: &Request, entry: &Entry) -> CommandError {
        let mut counted = req.clone();
        counted.wrong_codes += 1;
        let left = MAX_WRONG_CODES.saturating_sub(counted.wrong_codes);
        let approver = &ctx.op.name;
        if left == 0 {
            let by = format!("{approver} (after {MAX_WRONG_CODES} wrong TOTP codes)");
            if matches!(self.take(req, entry, "denied", &by).await, Ok(true)) {
                audit_request(ctx, req, "denied", approver).await;
            }
            return CommandError::denied(format!(
                "wrong TOTP code for {approver}; request {} is cancelled after {MAX_WRONG_CODES} wrong codes (file it again to retry)",
                req.id
            ));
        }
        // A lost race (another code, approval or expiry meanwhile) only
        // means this attempt is not counted twice.
        let _ = self
            .etcd
            .put_if_unchanged(
                &entry.key,
                entry.mod_revision,
                &encode(&counted),
                entry.lease,
            )
            .await;
        CommandError::denied(format!(
            "wrong TOTP code for {approver}; request {} still waits ({left} more wrong code(s) cancel it)",
            req.id
        ))
    }

    /// Cancels every pending request of `requester` (a suspension); how
    /// many were cancelled.
    pub async fn cancel_all_of(&self, requester: &str, by: &str) -> usize {
        let Ok(entries) = self
            .etcd
            .list_prefix(&format!("{}pending/", self.prefix), 1000, false)
            .await
        else {
            return 0;
        };
        let mut n = 0;
        for e in entries {
            let Ok(req) = serde_json::from_slice::<Request>(&e.value) else {
                continue;
            };
            if req.requester == requester
                && matches!(self.take(&req, &e, "denied", by).await, Ok(true))
            {
                n += 1;
            }
        }
        n
    }

    /// `/deny ID`: any admin, including the requester (cancelling).
    pub async fn deny(&self, ctx: &Ctx<'_>, id: &str) -> CommandResult {
        check_id(id)?;
        let (req, entry) = self.pending(ctx, id).await?;
        if ctx.op.role != Role::Admin && ctx.op.name != req.requester {
            return Err(CommandError::denied("only admins deny requests"));
        }
        if !self.take(&req, &entry, "denied", &ctx.op.name).await? {
            return Err(CommandError::conflict(format!(
                "request {id} was approved, denied or expired meanwhile"
            )));
        }
        audit_request(ctx, &req, "denied", &ctx.op.name).await;
        let verb = if ctx.op.name == req.requester {
            "cancelled"
        } else {
            "denied"
        };
        Ok(Reply::text(format!(
            "{verb}: request {id} ({} by {}) will not run",
            escape_line(&req.line),
            req.requester
        ))
        .with_data(serde_json::json!({"id": req.id, "status": "denied"})))
    }

    /// `/pending`: every request still waiting (admins see all).
    pub async fn list(&self, _ctx: &Ctx<'_>) -> CommandResult {
        let entries = self
            .etcd
            .list_prefix(&format!("{}pending/", self.prefix), 500, false)
            .await?;
        let mut reqs: Vec<Request> = entries
            .iter()
            .filter_map(|e| serde_json::from_slice(&e.value).ok())
            .collect();
        reqs.sort_by_key(|r| r.expires_at);
        let text = if reqs.is_empty() {
            "no pending requests".to_string()
        } else {
            // Every field escaped on its own line: what an approver reads is
            // exactly what /approve runs, and no stored text can draw a
            // line of its own or hide part of one.
            reqs.iter()
                .map(|r| {
                    format!(
                        "{} {} {} ({} s left): {}",
                        escape_line(&r.id),
                        escape_line(&r.requester),
                        escape_line(r.target.as_deref().unwrap_or("-")),
                        r.seconds_left(),
                        escape_line(&r.line)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        // Who the Telegram leader could not tell (they never wrote to the
        // userbot, so it has no way to address them).
        let unreachable = match &self.notifier {
            Some(n) => n.unreachable().await.unwrap_or_default(),
            None => Vec::new(),
        };
        let text = if unreachable.is_empty() {
            text
        } else {
            format!(
                "{text}\nnot reachable in Telegram (never wrote to the userbot): {}",
                unreachable
                    .iter()
                    .map(|u| escape_line(u))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let data: Vec<_> = reqs
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id, "requester": r.requester, "command": r.command,
                    "target": r.target, "line": r.line, "expires_in": r.seconds_left(),
                    "created_at": r.created_at,
                })
            })
            .collect();
        Ok(Reply::text(text)
            .with_data(serde_json::json!({ "pending": data, "not_reachable": unreachable })))
    }
}

/// An audit record about request `req` (`approved`, `denied`, or the
/// outcome of its run) and the admin who decided it.
async fn audit_request(ctx: &Ctx<'_>, req: &Request, result: &str, by: &str) {
    ctx.svc
        .audit
        .record(
            AuditRecord::new(
                &req.id,
                &req.requester,
                ctx.transport,
                &req.command,
                req.target.clone(),
                result,
            )
            .approved_by(by),
        )
        .await;
}

fn find_operator<'c>(cfg: &'c Config, name: &str) -> Result<&'c Operator, CommandError> {
    cfg.operators
        .iter()
        .find(|o| o.name == name)
        .ok_or_else(|| {
            CommandError::denied(format!(
                "{name} is no longer an operator; the request cannot run"
            ))
        })
}

/// Vault's answer about a TOTP code, as the approver should read it. The
/// code itself is never repeated.
fn totp_error(e: VaultError, approver: &str, key: &str) -> CommandError {
    match e.kind() {
        ErrorKind::NotFound => CommandError::denied(format!(
            "no TOTP key `{key}` for {approver} in Vault; a Vault operator creates it (vault write totp/keys/{key} generate=true …)"
        )),
        ErrorKind::Denied => CommandError::denied(
            "TOTP code refused (already used?); wait for the next code and try again",
        ),
        ErrorKind::Invalid => CommandError::invalid("invalid TOTP code: expected 6 to 8 digits"),
        _ => CommandError::from(e),
    }
}

impl crate::context::PendingRequests for Approvals {
    fn cancel_all_of<'a>(
        &'a self,
        requester: &'a str,
        by: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send + 'a>> {
        Box::pin(Approvals::cancel_all_of(self, requester, by))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex() {
        let id = new_id();
        assert_eq!(id.len(), 8);
        check_id(&id).unwrap();
        for bad in ["", "../x", "a/b", "zz", &"a".repeat(33)] {
            assert_eq!(check_id(bad).unwrap_err().kind, ErrorKind::Invalid);
        }
    }
}
