//! Break-glass: an admin named in `approvals.break_glass` runs a gated
//! command at once (`-break-glass -reason="…" -code=CODE`, their own TOTP
//! code), at most `break_glass_per_day` times in 24 hours. Every other
//! admin is told at once, in the same transaction that records the run;
//! the run waits for another admin's `/review ID ok|bad [NOTE]`, is
//! listed by `/pending` until then, and reminds the admins every
//! `review_within_secs` it stays unreviewed. `bad` suspends its author,
//! as `/operator suspend` does (with the reviewer's own step-up).

use secrecy::ExposeSecret;

use super::store::{new_id, Review};
use super::{check_id, check_reason, storable, Approvals, Notice};
use crate::clock::{now_rfc3339_millis as now_rfc3339, unix_secs};
use crate::command::{Command, GateFlags, Prepared, ReviewVerdict as Verdict};
use crate::config::Role;
use crate::context::{CommandError, CommandResult, Ctx, Reply};
use crate::records::audit::AuditRecord;
use crate::text::escape_line;

/// How long a break-glass alert may wait for a Telegram leader.
const ALERT_TTL: u64 = 86_400;

impl Approvals {
    /// Every admin but `but`.
    fn admins_but<'a>(&'a self, but: &str) -> Vec<&'a str> {
        self.admins
            .iter()
            .map(String::as_str)
            .filter(|a| *a != but)
            .collect()
    }

    /// Lets a gated command run at once as a break-glass run, or says why
    /// not. Nothing is recorded (and no code spent) for a run refused.
    pub async fn break_glass(
        &self,
        ctx: &Ctx<'_>,
        cmd: &Command,
        prepared: &Prepared,
        flags: &GateFlags,
    ) -> Result<(), CommandError> {
        let line = prepared.line.as_str();
        let op = ctx.op;
        if op.role != Role::Admin || !self.break_glass.contains(&op.name) {
            return Err(CommandError::denied(format!(
                "{} may not break glass (approvals.break_glass); file the request without -break-glass",
                op.name
            )));
        }
        let Some(reason) = flags.reason.as_deref() else {
            return Err(CommandError::invalid(
                "-break-glass needs -reason=\"…\": the other admins are told why",
            ));
        };
        let reason = check_reason(reason)?;
        let Some(code) = &flags.code else {
            return Err(CommandError::invalid(
                "-break-glass needs your own TOTP code: -code=CODE",
            ));
        };
        let Some(totp_key) = op.totp_key.as_deref() else {
            return Err(CommandError::denied(format!(
                "operator {} has no TOTP key configured (operators[].totp_key)",
                op.name
            )));
        };
        storable(cmd, line, "break glass")?;
        let used_up = || {
            CommandError::denied(format!(
                "{} broke glass {} time(s) in the last 24 hours, the most allowed (approvals.break_glass_per_day); file the request for approval instead",
                op.name, self.per_day
            ))
        };
        // Before the code is spent: a run that cannot be had costs nothing.
        if !self.store.break_glass_left(&op.name, self.per_day).await? {
            return Err(used_up());
        }
        let checked = crate::command::operator::check_own_code(
            ctx,
            totp_key,
            code.0.expose_secret(),
            "-break-glass",
        )
        .await?;
        if let Err(n) = checked {
            return Err(crate::command::operator::code_failed(ctx, n, "-break-glass").await);
        }
        let id = new_id()?;
        let now = unix_secs();
        let review = Review {
            id: id.clone(),
            author: op.name.clone(),
            command: cmd.name(),
            target: cmd.target(),
            line: line.to_string(),
            reason: reason.to_string(),
            request_id: ctx.request_id.to_string(),
            at: now_rfc3339(),
            due: now + self.review_within,
            next_alert: now + self.review_within,
            reminders: 0,
            verdict: None,
            reviewer: None,
            note: None,
        };
        let notice = Notice {
            kind: "break_glass",
            to: self.admins_but(&op.name),
            text: format!(
                "BREAK-GLASS {id}: {} runs {} without approval: it {} (via {}; reason: {}). Review it within {} s: /review {id} ok|bad [NOTE] (bad suspends {})",
                op.name,
                escape_line(line),
                escape_line(&prepared.effect),
                ctx.transport.as_str(),
                escape_line(reason),
                self.review_within,
                op.name
            ),
            expires_at: now + ALERT_TTL,
        };
        if self
            .store
            .file_break_glass(&review, self.per_day, &notice)
            .await?
            .is_none()
        {
            return Err(used_up());
        }
        tracing::warn!(
            request_id = %ctx.request_id,
            operator = %op.name,
            command = %review.command,
            break_glass = %id,
            "break-glass run"
        );
        crate::metrics::security_event("break_glass");
        ctx.svc
            .audit
            .record(
                AuditRecord::new(
                    ctx.request_id,
                    &op.name,
                    ctx.transport,
                    &review.command,
                    review.target.clone(),
                    "break_glass",
                )
                .approved_by(&format!("break-glass {id}"))
                .reason(Some(reason)),
            )
            .await;
        Ok(())
    }

    /// `/review ID ok|bad [NOTE]`: another admin's verdict on a
    /// break-glass run; `bad` suspends its author.
    pub async fn review(
        &self,
        ctx: &Ctx<'_>,
        id: &str,
        verdict: Verdict,
        note: &[String],
    ) -> CommandResult {
        check_id(id)?;
        let op = ctx.op;
        if op.role != Role::Admin {
            return Err(CommandError::denied("only admins review break-glass runs"));
        }
        let note = if note.is_empty() {
            None
        } else {
            Some(check_reason(&note.join(" "))?.to_string())
        };
        let Some((r, e)) = self.store.lookup_review(id).await? else {
            return Err(CommandError::not_found(format!(
                "no break-glass run {id} (see /pending)"
            )));
        };
        if r.author == op.name {
            return Err(CommandError::denied(format!(
                "you cannot review your own break-glass run {id}: another admin must"
            )));
        }
        if let Some(v) = &r.verdict {
            return Err(CommandError::conflict(format!(
                "break-glass run {id} was already reviewed by {}: {v}",
                r.reviewer.as_deref().unwrap_or("?")
            )));
        }
        let sec = &ctx.svc.security;
        if verdict == Verdict::Bad && sec.unlocked(&op.name, ctx.transport).await?.is_none() {
            // As `/operator suspend` of another operator: a stolen chat
            // account alone cannot lock a defender out.
            return Err(CommandError::denied(format!(
                "`bad` suspends {}, which needs your own step-up first: /unlock CODE (your TOTP code), then /review {id} bad",
                r.author
            )));
        }
        let mut done = r.clone();
        done.verdict = Some(verdict.as_str().to_string());
        done.reviewer = Some(op.name.clone());
        done.note = note.clone();
        let note_text = note
            .as_deref()
            .map(|n| format!(" (note: {})", escape_line(n)))
            .unwrap_or_default();
        let notice = Notice {
            kind: "break_glass_review",
            to: self.admins_but(&op.name),
            text: format!(
                "break-glass run {id} by {} ({}) reviewed by {}: {}{note_text}",
                r.author,
                escape_line(&r.line),
                op.name,
                verdict.as_str()
            ),
            expires_at: unix_secs() + ALERT_TTL,
        };
        if !self.store.replace(&e, &done, Some(&notice)).await? {
            return Err(CommandError::conflict(format!(
                "break-glass run {id} was reviewed meanwhile"
            )));
        }
        ctx.svc
            .audit
            .record(
                AuditRecord::new(
                    ctx.request_id,
                    &op.name,
                    ctx.transport,
                    "review",
                    Some(id.to_string()),
                    verdict.as_str(),
                )
                .reason(note.as_deref()),
            )
            .await;
        let head = format!(
            "reviewed: break-glass run {id} by {} ({}): {}",
            r.author,
            escape_line(&r.line),
            verdict.as_str()
        );
        let data = serde_json::json!({"id": id, "author": r.author, "verdict": verdict.as_str()});
        if verdict == Verdict::Ok {
            return Ok(Reply::text(head).with_data(data));
        }
        let suspended = crate::command::operator::suspend_by_review(
            ctx,
            &r.author,
            &format!("break-glass run {id} reviewed bad by {}", op.name),
        )
        .await?;
        Ok(Reply::text(format!("{head}\n{}", suspended.as_str())).with_data(data))
    }

    /// Unreviewed break-glass runs past their reminder time remind every
    /// admin but their author again (once per `review_within_secs`, by
    /// whoever notices first: `/pending` or the service's sweep). Returns
    /// how many reminders were queued.
    pub async fn remind_unreviewed(&self) -> usize {
        let Ok(reviews) = self.store.reviews().await else {
            return 0;
        };
        let now = unix_secs();
        let mut n = 0;
        for (r, e) in reviews {
            if r.verdict.is_some() || now < r.next_alert {
                continue;
            }
            let mut next = r.clone();
            next.reminders += 1;
            next.next_alert = now + self.review_within;
            let notice = Notice {
                kind: "break_glass_overdue",
                to: self.admins_but(&r.author),
                text: format!(
                    "break-glass run {} by {} ({}; reason: {}) is still unreviewed, {} s after it ran: /review {} ok|bad [NOTE]",
                    r.id,
                    r.author,
                    escape_line(&r.line),
                    escape_line(&r.reason),
                    now.saturating_sub(r.due.saturating_sub(self.review_within)),
                    r.id
                ),
                expires_at: now + ALERT_TTL,
            };
            if matches!(self.store.replace(&e, &next, Some(&notice)).await, Ok(true)) {
                tracing::warn!(break_glass = %r.id, operator = %r.author, "break-glass run unreviewed: reminder");
                n += 1;
            }
        }
        n
    }

    /// `/pending`'s lines for unreviewed break-glass runs, and their data.
    pub(super) async fn unreviewed(
        &self,
    ) -> Result<(Vec<String>, Vec<serde_json::Value>), CommandError> {
        let now = unix_secs();
        let mut open: Vec<Review> = self
            .store
            .reviews()
            .await?
            .into_iter()
            .map(|(r, _)| r)
            .filter(|r| r.verdict.is_none())
            .collect();
        open.sort_by_key(|r| r.due);
        let lines = open
            .iter()
            .map(|r| {
                let when = if now >= r.due {
                    format!("review OVERDUE by {} s", now - r.due)
                } else {
                    format!("review due in {} s", r.due - now)
                };
                format!(
                    "break-glass {} {} ran {} at {} (reason: {}): unreviewed, {when}; /review {} ok|bad",
                    escape_line(&r.id),
                    escape_line(&r.author),
                    escape_line(&r.line),
                    escape_line(&r.at),
                    escape_line(&r.reason),
                    escape_line(&r.id)
                )
            })
            .collect();
        let data = open
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id, "author": r.author, "command": r.command, "target": r.target,
                    "line": r.line, "reason": escape_line(&r.reason), "at": r.at,
                    "overdue": now >= r.due, "reminders": r.reminders,
                })
            })
            .collect();
        Ok((lines, data))
    }
}
