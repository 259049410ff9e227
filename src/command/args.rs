//! Arguments every command group shares (wrap TTL, paging, secrets,
//! `key=value`), and turning them into what the Vault layer takes.

use secrecy::SecretString;

use crate::context::{CommandError, Ctx};
use crate::vault::kv::{KvPath, KvPathError};
use crate::vault::wrap::WrapTtl;
use crate::vault::VaultError;

/// `-wrap-ttl=DURATION` on a command whose reply carries a secret: the
/// reply is then a single-use Vault response-wrapping token.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WrapArg {
    #[arg(long = "wrap-ttl", value_name = "DURATION")]
    pub wrap_ttl: Option<String>,
}

/// `[-page=N] [PREFIX]` of a listing: replies stay one Telegram message
/// (4,096 characters) however large the fleet.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListArgs {
    #[arg(long, value_name = "N")]
    pub page: Option<u32>,
    /// Only names starting with PREFIX.
    pub prefix: Option<String>,
}

/// One page of a sorted listing.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// 1-based.
    pub number: usize,
    pub pages: usize,
    /// Items on every page together (after the prefix filter).
    pub total: usize,
}

impl ListArgs {
    /// Page `-page=N` (default 1) of `items`, `size` per page.
    pub fn paginate<T>(
        &self,
        items: Vec<T>,
        size: usize,
    ) -> Result<Page<T>, crate::context::CommandError> {
        let total = items.len();
        let pages = total.div_ceil(size).max(1);
        let number = self.page.unwrap_or(1) as usize;
        if number == 0 || number > pages {
            return Err(crate::context::CommandError::invalid(format!(
                "-page={number}: there {} {pages} page{} of {size}",
                if pages == 1 { "is" } else { "are" },
                if pages == 1 { "" } else { "s" },
            )));
        }
        let items = items
            .into_iter()
            .skip((number - 1) * size)
            .take(size)
            .collect();
        Ok(Page {
            items,
            number,
            pages,
            total,
        })
    }

    /// The listing command `base` with this prefix (what a footer names).
    pub fn command(&self, base: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{base} {}", quote(p)),
            None => base.to_string(),
        }
    }

    /// Whether `name` passes the prefix filter.
    pub fn matches(&self, name: &str) -> bool {
        self.prefix.as_deref().is_none_or(|p| name.starts_with(p))
    }
}

impl<T> Page<T> {
    /// The line under a page that has others: where the next one is.
    /// `command` is the listing command with its prefix, without `-page`.
    pub fn footer(&self, command: &str) -> Option<String> {
        (self.pages > 1).then(|| {
            if self.number < self.pages {
                format!(
                    "page {} of {}; next: {command} -page={}",
                    self.number,
                    self.pages,
                    self.number + 1
                )
            } else {
                format!("page {} of {}", self.number, self.pages)
            }
        })
    }

    /// The reply showing this page: `text`, then the footer naming
    /// `command`'s next page; `data` holds page, pages, total and `rows`
    /// under `key`.
    pub fn reply(
        &self,
        text: String,
        command: &str,
        key: &str,
        rows: serde_json::Value,
    ) -> crate::context::Reply {
        let text = match self.footer(command) {
            Some(f) => format!("{text}\n{f}"),
            None => text,
        };
        let mut data =
            serde_json::json!({"page": self.number, "pages": self.pages, "total": self.total});
        data[key] = rows;
        crate::context::Reply::text(text).with_data(data)
    }
}

/// A secret given on the command line (a password, a TOTP code, a value to
/// encrypt). `Debug` is redacted.
#[derive(Clone)]
pub struct SecretArg(pub SecretString);

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretArg(<redacted>)")
    }
}

impl std::str::FromStr for SecretArg {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretArg(SecretString::from(s.to_string())))
    }
}

/// A `key=value` pair whose value is secret.
#[derive(Clone)]
pub struct Pair {
    pub key: String,
    pub value: SecretString,
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=<redacted>", self.key)
    }
}

impl std::str::FromStr for Pair {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((k, v)) = s.split_once('=') else {
            // Never echo the word: it may be a value typed without its key.
            return Err("expected key=value".into());
        };
        if k.is_empty()
            || k.len() > 128
            || k.chars()
                .any(|c| crate::text::forbidden_char(c) || c.is_whitespace())
        {
            return Err("invalid key in key=value".into());
        }
        Ok(Pair {
            key: k.to_string(),
            value: SecretString::from(v.to_string()),
        })
    }
}

/// One word of a canonical line, quoted so that [`super::lexer::split`] gives it
/// back unchanged.
pub fn quote(word: &str) -> String {
    if !word.is_empty()
        && !word
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        return word.to_string();
    }
    let mut q = String::with_capacity(word.len() + 2);
    q.push('"');
    for c in word.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// A refused KV path as a command error (`invalid`).
pub fn path_error(e: KvPathError) -> CommandError {
    CommandError::from(VaultError::from(e))
}

/// The response-wrapping TTL for a reply that carries a secret: the
/// operator's `-wrap-ttl`, else `telegram.wrap_ttl` for their role (which
/// makes wrapping the default for that role; a configured TTL above the
/// 24 h a wrapping token may live is capped at 24 h), else none.
pub fn wrap_ttl(ctx: &Ctx<'_>, arg: &WrapArg) -> Result<Option<WrapTtl>, CommandError> {
    if let Some(s) = &arg.wrap_ttl {
        return WrapTtl::parse(s)
            .map(Some)
            .map_err(|e| CommandError::invalid(e.to_string()));
    }
    match ctx.cfg().telegram.wrap_ttl_for(ctx.op.role) {
        None => Ok(None),
        Some(d) => {
            let secs = d.as_secs().clamp(WrapTtl::MIN_SECS, WrapTtl::MAX_SECS);
            WrapTtl::from_secs(secs).map(Some).map_err(|_| {
                CommandError::invalid(format!(
                    "config key `telegram.wrap_ttl.{}`: not a usable wrap TTL",
                    ctx.op.role
                ))
            })
        }
    }
}

/// `vaultgram/...` under the configured KV mount.
pub fn kv_path(ctx: &Ctx<'_>, path: &str) -> Result<KvPath, CommandError> {
    KvPath::new(&ctx.cfg().vault.kv_mount, path).map_err(|e| CommandError::invalid(e.to_string()))
}

/// The agent an agent operator acts for.
pub fn op_agent<'a>(ctx: &'a Ctx<'_>) -> Result<&'a str, CommandError> {
    ctx.op
        .agent
        .as_deref()
        .ok_or_else(|| CommandError::denied("this operator has no agent id in the config"))
}
