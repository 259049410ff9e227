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
//! # Where it lives
//!
//! `store.rs` holds the records, their etcd keys and the transactions;
//! this file holds the rules. Nothing stored holds a secret: a gated
//! command line carries no value (commands whose input is secret are
//! refused by the gate), and the TOTP code is never stored or logged.

mod break_glass;
mod store;

use crate::clock::now_rfc3339_millis as now_rfc3339;
use crate::clock::unix_secs;
use crate::command::Command;
use crate::config::{Config, Operator, Role};
use crate::context::{AuditTrail, CommandError, CommandResult, Ctx, Reply};
use crate::error::ErrorKind;
use crate::etcd::{Entry, Etcd};
use crate::records::audit::AuditRecord;
use crate::text::escape_line;
use crate::transport_kind::Transport;

use store::{new_id, Grant, LogEntry, Lookup, Notice, Store};
pub use store::{Request, Status};

/// A grant for a secret-reply command is valid at least this long.
const MIN_GRANT_SECS: u64 = 10;
/// Wrong TOTP codes one request takes before it is cancelled: a code is
/// 6 digits, so guessing must stay hopeless.
pub const MAX_WRONG_CODES: u32 = 3;
/// How long an outcome message may wait for a Telegram leader.
const OUTCOME_NOTICE_TTL: u64 = 86_400;

/// A one-time grant found by [`Approvals::gate`], not spent yet.
pub struct HeldGrant(Entry);

/// What an approval leads to.
pub enum Approval {
    /// A one-time grant: the requester runs the command itself.
    Granted(Reply),
    /// One more approval, short of the quorum: nothing runs yet.
    Counted(Reply),
    /// A request the dispatcher runs now, as its requester.
    Run(Box<ApprovedRun>),
}

/// An approved request, taken from the store, parsed and checked again.
pub struct ApprovedRun {
    pub request: Request,
    pub cmd: Command,
    /// Who approved it (the quorum's admins, in order).
    pub approver: String,
}

/// What a new request carries besides its line.
pub struct Filing<'a> {
    /// Distinct approvals it needs (`approvals.quorum`).
    pub quorum: u32,
    /// `-reason="…"`, checked by [`check_reason`].
    pub reason: Option<&'a str>,
    /// What it will do, resolved now (`command::Prepared::effect`).
    pub effect: &'a str,
}

/// A reason is for a person to read in a notice: one or two sentences.
pub const MAX_REASON_CHARS: usize = 280;

/// A reason fit to store: not blank, not longer than [`MAX_REASON_CHARS`].
/// Its characters are kept as typed and escaped wherever it is shown.
pub fn check_reason(reason: &str) -> Result<&str, CommandError> {
    let r = reason.trim();
    if r.is_empty() {
        return Err(CommandError::invalid(
            "-reason is empty: say why, e.g. -reason=\"ticket 42\"",
        ));
    }
    let n = r.chars().count();
    if n > MAX_REASON_CHARS {
        return Err(CommandError::invalid(format!(
            "-reason is too long ({n} characters, at most {MAX_REASON_CHARS})"
        )));
    }
    Ok(r)
}

/// " (reason: …)", escaped, or nothing.
fn reason_suffix(reason: Option<&str>) -> String {
    reason
        .map(|r| format!(" (reason: {})", escape_line(r)))
        .unwrap_or_default()
}

impl ApprovedRun {
    /// The operator the request runs as.
    pub fn requester<'c>(&self, cfg: &'c Config) -> Result<&'c Operator, CommandError> {
        find_operator(cfg, &self.request.requester)
    }
}

pub struct Approvals {
    store: Store,
    ttl_secs: u64,
    require_reason: bool,
    /// `approvals.break_glass`, `break_glass_per_day`, `review_within_secs`.
    break_glass: Vec<String>,
    per_day: u32,
    review_within: u64,
    max_pending: u32,
    /// Who hears of a new request (all admins but its requester).
    admins: Vec<String>,
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

impl Approvals {
    pub fn new(etcd: Etcd, cfg: &Config) -> Approvals {
        Approvals {
            store: Store::new(etcd, cfg),
            ttl_secs: cfg.approvals.ttl_secs,
            require_reason: cfg.approvals.require_reason,
            break_glass: cfg.approvals.break_glass.clone(),
            per_day: cfg.approvals.break_glass_per_day,
            review_within: cfg.approvals.review_within_secs,
            max_pending: cfg.approvals.max_pending_per_operator,
            admins: cfg.admin_names(),
        }
    }

    /// What the requester is told when `req` ends with `status`.
    fn outcome_text(&self, req: &Request, status: Status, by: &str) -> String {
        let what = format!("your request {} ({})", req.id, escape_line(&req.line));
        match status {
            Status::Approved => {
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
            Status::Expired => format!("{what} expired without approval"),
            Status::Denied | Status::Pending => format!("{what} was {} by {by}", status.as_str()),
        }
    }

    /// A vote short of the quorum: the requester and the admins who may
    /// still approve hear the tally.
    fn vote_notice<'a>(&'a self, req: &'a Request) -> Notice<'a> {
        Notice {
            kind: "approval_vote",
            to: std::iter::once(req.requester.as_str())
                .chain(
                    self.admins
                        .iter()
                        .map(String::as_str)
                        .filter(|a| *a != req.requester && !req.votes.iter().any(|v| v == a)),
                )
                .collect(),
            text: format!(
                "request {}: {} asks to run {}{}: {}\napprove: /approve {} CODE",
                req.id,
                req.requester,
                escape_line(&req.line),
                reason_suffix(req.reason.as_deref()),
                req.tally(),
                req.id
            ),
            expires_at: req.expires_at,
        }
    }

    /// The requester's message about `req` ending with `status`.
    fn outcome_notice<'a>(&self, req: &'a Request, status: Status, by: &str) -> Notice<'a> {
        Notice {
            kind: "approval_outcome",
            to: vec![req.requester.as_str()],
            text: self.outcome_text(req, status, by),
            expires_at: unix_secs() + OUTCOME_NOTICE_TTL,
        }
    }

    /// Lets `cmd` through when an approval grants it, otherwise files a
    /// pending request for its canonical `line` and answers
    /// `approval_required`.
    ///
    /// A grant is only found here, not spent: the caller spends it with
    /// [`Approvals::spend`] once the reply exists.
    pub async fn gate(
        &self,
        ctx: &Ctx<'_>,
        cmd: &Command,
        line: &str,
        filing: &Filing<'_>,
    ) -> Result<Option<HeldGrant>, CommandError> {
        if let Some(e) = self.store.find_grant(&ctx.op.name, line).await? {
            return Ok(Some(HeldGrant(e)));
        }
        let reason = filing.reason.map(check_reason).transpose()?;
        if reason.is_none() && self.require_reason {
            return Err(CommandError::invalid(format!(
                "/{} needs approval, and approvals.require_reason asks why: add -reason=\"…\"",
                cmd.name()
            )));
        }
        storable(cmd, line, "wait for approval")?;
        for _ in 0..5 {
            let Some(slot) = self.store.free_slot(&ctx.op.name, self.max_pending).await? else {
                return Err(CommandError::conflict(format!(
                    "{} has {} requests waiting, the most allowed (approvals.max_pending_per_operator); wait for them or cancel one with /deny ID",
                    ctx.op.name, self.max_pending
                )));
            };
            let id = new_id()?;
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
                quorum: filing.quorum.max(1),
                votes: Vec::new(),
                reason: reason.map(str::to_string),
                effect: Some(filing.effect.to_string()),
            };
            let needs = if req.quorum > 1 {
                format!(" (needs {} approvals)", req.quorum)
            } else {
                String::new()
            };
            // Every admin who may approve it hears of it, in the same
            // transaction: a filed request is always announced, once.
            let notice = Notice {
                kind: "approval_request",
                to: self
                    .admins
                    .iter()
                    .map(String::as_str)
                    .filter(|a| *a != ctx.op.name)
                    .collect(),
                text: format!(
                    "approval request {id}: {} asks to run {}{}{}{needs} (expires in {} s)\nit {}\napprove: /approve {id} CODE\ndeny: /deny {id}",
                    req.requester,
                    escape_line(&req.line),
                    req.target
                        .as_deref()
                        .map(|t| format!(" on {}", escape_line(t)))
                        .unwrap_or_default(),
                    reason_suffix(req.reason.as_deref()),
                    self.ttl_secs,
                    escape_line(filing.effect)
                ),
                expires_at: req.expires_at,
            };
            if self.store.file(&req, slot, Some(&notice)).await? {
                tracing::info!(
                    request_id = %ctx.request_id,
                    approval = %id,
                    operator = %ctx.op.name,
                    command = %req.command,
                    "approval requested"
                );
                let who = if req.quorum > 1 {
                    format!("{} more admins", req.quorum)
                } else {
                    "a second admin".to_string()
                };
                return Err(CommandError::new(
                    ErrorKind::ApprovalRequired,
                    format!(
                        "request {id} waits for {who}: /approve {id} CODE (expires in {} s)",
                        self.ttl_secs
                    ),
                ));
            }
            // An ID collision, or another request took the slot: try again.
        }
        Err(CommandError::unavailable(
            "could not file the approval request (concurrent requests); try again",
        ))
    }

    /// Spends `grant` now that its command produced a reply. A concurrent
    /// run of the same line that spent it first wins: this reply is then
    /// withheld, so a grant still yields one reply.
    pub async fn spend(&self, ctx: &Ctx<'_>, grant: HeldGrant) -> Result<(), CommandError> {
        if self.store.spend_grant(&grant.0).await? {
            tracing::info!(
                request_id = %ctx.request_id,
                operator = %ctx.op.name,
                "approval grant used"
            );
            Ok(())
        } else {
            Err(CommandError::conflict(
                "the approval for this command was used meanwhile by another run of it; this reply is withheld",
            ))
        }
    }

    /// The pending request `id`, or why there is none.
    async fn pending(&self, ctx: &Ctx<'_>, id: &str) -> Result<(Request, Entry), CommandError> {
        let (log, e) = match self.store.lookup(id).await? {
            Lookup::Pending(req, e) => return Ok((req, e)),
            Lookup::Unknown => {
                return Err(CommandError::not_found(format!(
                    "no pending request {id} (see /pending)"
                )))
            }
            Lookup::Logged(log, e) => (log, e),
        };
        let by = log.by.as_deref().unwrap_or("?");
        match log.status {
            Status::Pending | Status::Expired => {
                if log.status == Status::Pending {
                    self.mark_expired(ctx.svc.audit.as_ref(), ctx.transport, &e, &log)
                        .await;
                }
                Err(CommandError::not_found(format!(
                    "request {id} expired: nobody approved it within {} s; run the command again to file a new request",
                    log.request.ttl_secs
                )))
            }
            Status::Approved => Err(CommandError::conflict(format!(
                "request {id} was already approved by {by}"
            ))),
            Status::Denied => Err(CommandError::conflict(format!(
                "request {id} was denied by {by}"
            ))),
        }
    }

    /// Records an expiry once (whoever notices first wins the
    /// transaction): the log entry becomes `expired`, the requester is
    /// told, one audit record.
    async fn mark_expired(
        &self,
        audit: &dyn AuditTrail,
        transport: Transport,
        e: &Entry,
        log: &LogEntry,
    ) {
        let r = &log.request;
        let notice = self.outcome_notice(r, Status::Expired, "-");
        if self.store.mark_expired(e, log, Some(&notice)).await {
            audit
                .record(
                    AuditRecord::new(
                        &r.id,
                        &r.requester,
                        transport,
                        &r.command,
                        r.target.clone(),
                        Status::Expired.as_str(),
                    )
                    .reason(r.reason.as_deref()),
                )
                .await;
        }
    }

    /// Finds requests whose lease ran out unseen and records their expiry
    /// (`run` calls this periodically, so expiry is audited even when
    /// nobody tries to approve). Returns how many it recorded.
    pub async fn sweep_expired(&self, audit: &dyn AuditTrail, transport: Transport) -> usize {
        let found = self.store.unrecorded_expiries().await;
        for (e, log) in &found {
            self.mark_expired(audit, transport, e, log).await;
        }
        found.len()
    }

    /// Takes the pending request and records `status` by `by`; the
    /// requester hears of it unless they cancelled it themselves.
    /// `false`: someone else took it, or it expired, meanwhile.
    async fn take(
        &self,
        req: &Request,
        pending: &Entry,
        status: Status,
        by: &str,
    ) -> Result<bool, CommandError> {
        self.take_telling(req, pending, status, by, by != req.requester)
            .await
    }

    /// [`Self::take`] where the caller says whether the requester is told
    /// (`by` may carry more than a name: a denial's reason).
    async fn take_telling(
        &self,
        req: &Request,
        pending: &Entry,
        status: Status,
        by: &str,
        tell_requester: bool,
    ) -> Result<bool, CommandError> {
        let notice = tell_requester.then(|| self.outcome_notice(req, status, by));
        self.store
            .take(req, pending, status, by, notice.as_ref())
            .await
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
        if req.votes.contains(&approver.name) {
            return Err(already_voted(&req));
        }
        let Some(totp_key) = approver.totp_key.as_deref() else {
            return Err(CommandError::denied(format!(
                "operator {} has no TOTP key configured (operators[].totp_key)",
                approver.name
            )));
        };
        // Counted before Vault is asked, with the approver's `/unlock`
        // codes: `/approve` is no way around `unlock_max_failures`.
        let checked =
            crate::command::operator::check_own_code(ctx, totp_key, code, "/approve").await?;
        if let Err(n) = checked {
            let on_request = self.wrong_code(ctx, &req, &entry).await;
            let on_approver =
                crate::command::operator::code_failed(ctx, n, &format!("/approve {id}")).await;
            return Err(CommandError::denied(format!(
                "{}; {}",
                on_request.message, on_approver.message
            )));
        }
        // The requester may have been suspended since it asked: nothing
        // runs (or is granted) for a suspended operator.
        match ctx.svc.security.suspension(&req.requester).await {
            Ok(None) => {}
            Ok(Some(_)) => {
                let by = format!("{} (requester suspended)", approver.name);
                if matches!(self.take(&req, &entry, Status::Denied, &by).await, Ok(true)) {
                    audit_request(ctx, &req, Status::Denied.as_str(), &approver.name).await;
                }
                return Err(CommandError::denied(format!(
                    "{} is suspended: request {id} is cancelled and will not run",
                    req.requester
                )));
            }
            Err(e) => {
                return Err(CommandError::unavailable(format!(
                    "the suspension state of {} is unknown ({e}); request {id} still waits",
                    req.requester
                )))
            }
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
        self.check_unchanged(ctx, &req, &entry, requester, &cmd)
            .await?;
        // A quorum counts distinct admins. Each vote is written over the
        // pending request (compare and swap); the vote that completes it
        // takes the request, exactly once across replicas. A lost race
        // reads the request again: the code was good, it is not asked twice.
        let (mut req, mut entry) = (req, entry);
        let mut tries = 0;
        let by = loop {
            if req.votes.contains(&approver.name) {
                return Err(already_voted(&req));
            }
            let mut voted = req.clone();
            voted.votes.push(approver.name.clone());
            if (voted.votes.len() as u32) < req.quorum {
                let notice = self.vote_notice(&voted);
                if self.store.replace(&entry, &voted, Some(&notice)).await? {
                    audit_request(ctx, &voted, "voted", &approver.name).await;
                    return Ok(Approval::Counted(
                        Reply::text(format!(
                            "counted: request {id} has {}; it runs when {} more admin(s) approve",
                            voted.tally(),
                            voted.quorum as usize - voted.votes.len()
                        ))
                        .with_data(serde_json::json!({
                            "id": voted.id, "votes": voted.votes, "quorum": voted.quorum,
                        })),
                    ));
                }
            } else {
                let by = voted.votes.join(", ");
                if self.take(&voted, &entry, Status::Approved, &by).await? {
                    req = voted;
                    break by;
                }
            }
            tries += 1;
            match self.store.lookup(id).await? {
                Lookup::Pending(r, e) if tries < 5 => (req, entry) = (r, e),
                _ => {
                    return Err(CommandError::conflict(format!(
                        "request {id} was approved, denied or expired meanwhile"
                    )))
                }
            }
        };
        let name = cmd.name();
        let target = cmd.target();
        if cmd.reply_is_secret() {
            // The approver must not see the secret: grant the requester one run.
            let secs = req.seconds_left().max(MIN_GRANT_SECS);
            let grant = Grant {
                id: req.id.clone(),
                requester: req.requester.clone(),
                line: req.line.clone(),
                approved_by: by.clone(),
                expires_at: unix_secs() + secs,
            };
            self.store.put_grant(&grant, secs).await?;
            audit_request(ctx, &req, Status::Approved.as_str(), &by).await;
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
            approver: by,
        })))
    }

    /// What was approved is what runs: the request's effect is resolved
    /// again, as its requester, and compared with what the approvers were
    /// shown when it was filed. Changed (a new version, a rotated key, a
    /// record gone): the request is cancelled and nothing runs. Vault
    /// unreachable: refused, the request still waits.
    async fn check_unchanged(
        &self,
        ctx: &Ctx<'_>,
        req: &Request,
        entry: &Entry,
        requester: &Operator,
        cmd: &Command,
    ) -> Result<(), CommandError> {
        let Some(filed) = req.effect.as_deref() else {
            return Ok(());
        };
        let rctx = Ctx::new(ctx.svc, requester, ctx.transport, &req.id).with_line(&req.line);
        let now = match Box::pin(crate::command::prepare(&rctx, cmd)).await {
            Ok(p) if p.effect == filed => return Ok(()),
            Ok(p) => format!("it {}", p.effect),
            Err(e) if e.kind == ErrorKind::Unavailable => return Err(e),
            Err(e) => format!("it cannot run: {}", e.message),
        };
        let by = format!("{} (target changed)", ctx.op.name);
        if !matches!(self.take(req, entry, Status::Denied, &by).await, Ok(true)) {
            return Err(CommandError::conflict(format!(
                "request {} was approved, denied or expired meanwhile",
                req.id
            )));
        }
        audit_request(ctx, req, Status::Denied.as_str(), &by).await;
        Err(CommandError::conflict(format!(
            "request {} changed since it was filed: then it {}; now {}. Nothing runs and the request is cancelled; file it again if it is still wanted",
            req.id,
            escape_line(filed),
            escape_line(&now)
        )))
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
            if matches!(self.take(req, entry, Status::Denied, &by).await, Ok(true)) {
                audit_request(ctx, req, Status::Denied.as_str(), approver).await;
            }
            return CommandError::denied(format!(
                "wrong TOTP code for {approver}; request {} is cancelled after {MAX_WRONG_CODES} wrong codes (file it again to retry)",
                req.id
            ));
        }
        self.store.count_wrong_code(entry, &counted).await;
        CommandError::denied(format!(
            "wrong TOTP code for {approver}; request {} still waits ({left} more wrong code(s) cancel it)",
            req.id
        ))
    }

    /// Cancels every pending request of `requester` and withdraws its
    /// unused grants (a suspension); how many of both.
    pub async fn cancel_all_of(&self, requester: &str, by: &str) -> usize {
        let mut n = match self.store.withdraw_grants(requester).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(operator = requester, error = %e, "suspend: grants not withdrawn");
                0
            }
        };
        let Ok(waiting) = self.store.pending_requests(1000).await else {
            return n;
        };
        for (req, e) in waiting {
            if req.requester == requester {
                if matches!(self.take(&req, &e, Status::Denied, by).await, Ok(true)) {
                    n += 1;
                }
            } else if req.votes.iter().any(|v| v == requester) {
                // A suspended admin's approvals no longer count.
                let mut r = req.clone();
                r.votes.retain(|v| v != requester);
                if matches!(self.store.replace(&e, &r, None).await, Ok(true)) {
                    n += 1;
                }
            }
        }
        n
    }

    /// `/deny ID [REASON…]`: any admin, including the requester
    /// (cancelling); one denial ends a request whatever its quorum. The
    /// reason goes to the requester with the outcome.
    pub async fn deny(&self, ctx: &Ctx<'_>, id: &str, reason: &[String]) -> CommandResult {
        check_id(id)?;
        let reason = if reason.is_empty() {
            None
        } else {
            Some(check_reason(&reason.join(" "))?.to_string())
        };
        let (req, entry) = self.pending(ctx, id).await?;
        if ctx.op.role != Role::Admin && ctx.op.name != req.requester {
            return Err(CommandError::denied("only admins deny requests"));
        }
        let by = format!("{}{}", ctx.op.name, reason_suffix(reason.as_deref()));
        let cancelled = ctx.op.name == req.requester;
        if !self
            .take_telling(&req, &entry, Status::Denied, &by, !cancelled)
            .await?
        {
            return Err(CommandError::conflict(format!(
                "request {id} was approved, denied or expired meanwhile"
            )));
        }
        audit_request(ctx, &req, Status::Denied.as_str(), &ctx.op.name).await;
        let verb = if cancelled { "cancelled" } else { "denied" };
        Ok(Reply::text(format!(
            "{verb}: request {id} ({} by {}) will not run",
            escape_line(&req.line),
            req.requester
        ))
        .with_data(serde_json::json!({"id": req.id, "status": Status::Denied})))
    }

    /// `/pending`: every request still waiting (admins see all).
    pub async fn list(&self, _ctx: &Ctx<'_>) -> CommandResult {
        // Whoever looks is reminded of what waits for review (and so are
        // the other admins, once per `review_within_secs`).
        self.remind_unreviewed().await;
        let (glass_lines, glass_data) = self.unreviewed().await?;
        let mut reqs: Vec<Request> = self
            .store
            .pending_requests(500)
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        reqs.sort_by_key(|r| r.expires_at);
        let text = if reqs.is_empty() && glass_lines.is_empty() {
            "no pending requests".to_string()
        } else {
            // Every field escaped on its own line: what an approver reads is
            // exactly what /approve runs, and no stored text can draw a
            // line of its own or hide part of one.
            reqs.iter()
                .map(|r| {
                    format!(
                        "{} {} {} ({} s left, {}): {}{}{}",
                        escape_line(&r.id),
                        escape_line(&r.requester),
                        escape_line(r.target.as_deref().unwrap_or("-")),
                        r.seconds_left(),
                        escape_line(&r.tally()),
                        escape_line(&r.line),
                        reason_suffix(r.reason.as_deref()),
                        r.effect
                            .as_deref()
                            .map(|e| format!(" — it {}", escape_line(e)))
                            .unwrap_or_default()
                    )
                })
                .chain(glass_lines)
                .collect::<Vec<_>>()
                .join("\n")
        };
        // Who the Telegram leader could not tell (they never wrote to the
        // userbot, so it has no way to address them).
        let unreachable = self.store.unreachable().await;
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
                    "created_at": r.created_at, "quorum": r.quorum, "votes": r.votes,
                    "reason": r.reason.as_deref().map(|x| escape_line(x).into_owned()),
                    "effect": r.effect,
                })
            })
            .collect();
        Ok(Reply::text(text).with_data(serde_json::json!({
            "pending": data, "break_glass": glass_data, "not_reachable": unreachable,
        })))
    }
}

/// Never store a line that carries a value (a pending request, a
/// break-glass review): `/{cmd} cannot {what}` otherwise.
fn storable(cmd: &Command, line: &str, what: &str) -> Result<(), CommandError> {
    if line.is_empty() || cmd.input_is_secret() {
        return Err(CommandError::invalid(format!(
            "/{} cannot {what}: its line carries a secret",
            cmd.name()
        )));
    }
    Ok(())
}

/// The approver voted for `req` already: one admin counts once.
fn already_voted(req: &Request) -> CommandError {
    CommandError::conflict(format!(
        "you already approved request {} ({}); it needs {} more from other admins",
        req.id,
        req.tally(),
        (req.quorum as usize).saturating_sub(req.votes.len())
    ))
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
            .approved_by(by)
            .reason(req.reason.as_deref()),
        )
        .await;
}

fn find_operator<'c>(cfg: &'c Config, name: &str) -> Result<&'c Operator, CommandError> {
    cfg.operator_by_name(name).ok_or_else(|| {
        CommandError::denied(format!(
            "{name} is no longer an operator; the request cannot run"
        ))
    })
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
    fn reasons_are_bounded_not_blank() {
        assert_eq!(check_reason("  ticket 42 ").unwrap(), "ticket 42");
        assert_eq!(
            check_reason(&"é".repeat(MAX_REASON_CHARS))
                .unwrap()
                .chars()
                .count(),
            MAX_REASON_CHARS
        );
        assert_eq!(
            check_reason(&"x".repeat(5000)).unwrap_err().message,
            "-reason is too long (5000 characters, at most 280)"
        );
        assert_eq!(check_reason(" \t ").unwrap_err().kind, ErrorKind::Invalid);
        assert_eq!(reason_suffix(Some("a\u{202e}b")), " (reason: a\\u{202e}b)");
        assert_eq!(reason_suffix(None), "");
    }

    #[test]
    fn requests_filed_before_quorums_need_one_approval() {
        let old = r#"{"id":"0a0b0c0d","requester":"alice","command":"transit rotate","target":"k",
            "line":"/transit rotate k","request_id":"r","transport":"console",
            "created_at":"t","expires_at":1,"ttl_secs":600}"#;
        let r: Request = serde_json::from_str(old).unwrap();
        assert_eq!(
            (r.quorum, r.votes.len(), r.reason.clone(), r.effect.clone()),
            (1, 0, None, None)
        );
        assert_eq!(r.tally(), "0 of 1 approvals");
        let mut v = r.clone();
        v.quorum = 3;
        v.votes = vec!["dave".into(), "erin".into()];
        assert_eq!(v.tally(), "2 of 3 approvals (dave, erin)");
        assert!(already_voted(&v)
            .message
            .contains("it needs 1 more from other admins"));
    }

    #[test]
    fn ids_are_hex() {
        check_id(&new_id().unwrap()).unwrap();
        for bad in ["", "../x", "a/b", "zz", &"a".repeat(33)] {
            assert_eq!(check_id(bad).unwrap_err().kind, ErrorKind::Invalid);
        }
    }
}
