//! One audit record: the JSON the audit trail keeps in etcd (under
//! `<prefix>audit/`) and writes to the log. The store is `crate::audit`.

use serde::Serialize;

use crate::transport_kind::Transport;

/// One audit record.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// RFC 3339, UTC.
    pub time: String,
    pub request_id: String,
    pub operator: String,
    pub transport: String,
    pub command: String,
    pub target: Option<String>,
    /// `ok`, an error kind, or `ignored` (unknown sender); for the
    /// lifecycle of an approval-gated request also `approved`, `denied`,
    /// `expired`.
    pub result: String,
    /// The admin who approved (or denied) the request this record is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_by: Option<String>,
    /// The requester's `-reason="…"` for an approval-gated request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `time` in nanoseconds since the epoch: orders the etcd keys exactly
    /// as `time` orders the records.
    #[serde(skip)]
    at_nanos: u128,
}

impl AuditRecord {
    pub fn new(
        request_id: &str,
        operator: &str,
        transport: Transport,
        command: &str,
        target: Option<String>,
        result: &str,
    ) -> AuditRecord {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        AuditRecord {
            time: crate::clock::rfc3339_millis(now),
            at_nanos: now.as_nanos(),
            request_id: request_id.to_string(),
            operator: operator.to_string(),
            transport: transport.as_str().to_string(),
            command: command.to_string(),
            target,
            result: result.to_string(),
            approved_by: None,
            reason: None,
        }
    }

    /// When it was made, in nanoseconds since the epoch (0 for a record
    /// read back from etcd).
    pub fn at_nanos(&self) -> u128 {
        self.at_nanos
    }

    /// Names the second admin of an approval-gated request.
    pub fn approved_by(mut self, admin: &str) -> AuditRecord {
        self.approved_by = Some(admin.to_string());
        self
    }

    /// The reason the requester gave (`-reason="…"`), if any.
    pub fn reason(mut self, reason: Option<&str>) -> AuditRecord {
        self.reason = reason.map(str::to_string);
        self
    }

    /// One line for `/audit`. Every field is escaped on its own: a record
    /// (written by any version, or by anyone with etcd access) cannot draw
    /// a line of its own or hide part of one.
    pub fn render(&self) -> String {
        use crate::text::escape_line as e;
        let mut line = format!(
            "{} {} {} ({}) /{} {} -> {}",
            e(&self.time),
            e(&self.request_id),
            e(&self.operator),
            e(&self.transport),
            e(&self.command),
            e(self.target.as_deref().unwrap_or("-")),
            e(&self.result)
        );
        if let Some(a) = &self.approved_by {
            line.push_str(&format!(" (by {})", e(a)));
        }
        if let Some(r) = &self.reason {
            line.push_str(&format!(" (reason: {})", e(r)));
        }
        line
    }
}
