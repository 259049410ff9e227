//! Where the config file is, and the paths in it: resolved against the
//! config's directory, shown as an operator would type them.

use std::path::{Component, Path, PathBuf};

/// Where the config is looked for when neither `--config` nor
/// `$VAULTGRAM_CONFIG` is given.
pub const DEFAULT_PATH: &str = "/etc/vaultgram/vaultgram.toml";

/// Where the config comes from: explicit `--config`, else
/// `$VAULTGRAM_CONFIG`, else [`DEFAULT_PATH`].
pub fn resolve_path(cli: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let Some(path) = cli {
        return path.to_path_buf();
    }
    match env("VAULTGRAM_CONFIG").filter(|v| !v.trim().is_empty()) {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(DEFAULT_PATH),
    }
}

pub(super) fn resolve(base: &Path, path: &Path) -> PathBuf {
    if path.as_os_str().is_empty() {
        // Left empty so that validation reports "must not be empty"
        // instead of silently meaning the config directory.
        return PathBuf::new();
    }
    clean(&base.join(path))
}

/// Make `path` absolute against the working directory (lexically).
pub(super) fn absolute(path: &Path) -> PathBuf {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    clean(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// Drop `.` components (`/etc/vaultgram/./ca.pem` → `/etc/vaultgram/ca.pem`)
/// so messages show the path an operator would type. `..` is kept:
/// removing it lexically is wrong across symlinks.
pub(super) fn clean(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}
