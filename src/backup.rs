//! What `scripts/backup.sh` leaves in `backup.dir`: the newest finished
//! snapshot of each kind. `doctor` judges it; `/metrics` exports its time
//! so that an alert can page when backups stop.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

/// The kinds of snapshot the backup job writes (file name prefixes).
pub const KINDS: [&str; 3] = ["etcd", "raft", "unsealer"];

/// One snapshot file.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub file: String,
    pub modified: SystemTime,
    pub bytes: u64,
}

/// The newest finished snapshot (its `.sha256` beside it: the job writes
/// that last) of each kind present in `dir`.
pub fn newest(dir: &Path) -> std::io::Result<BTreeMap<&'static str, Snapshot>> {
    let mut newest: BTreeMap<&'static str, Snapshot> = BTreeMap::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let kind = match name.as_str() {
            n if n.starts_with("etcd-") && n.ends_with(".db") => KINDS[0],
            n if n.starts_with("raft-") && n.ends_with(".snap") => KINDS[1],
            n if n.starts_with("unsealer-") && n.ends_with(".snap") => KINDS[2],
            _ => continue,
        };
        if !dir.join(format!("{name}.sha256")).is_file() {
            continue;
        }
        let Ok(meta) = e.metadata() else { continue };
        let Ok(modified) = meta.modified() else {
            continue;
        };
        if newest.get(kind).is_none_or(|s| modified > s.modified) {
            newest.insert(
                kind,
                Snapshot {
                    file: name,
                    modified,
                    bytes: meta.len(),
                },
            );
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_finished_snapshots_count_and_the_newest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("etcd-1.db"), b"a").unwrap();
        std::fs::write(p.join("etcd-1.db.sha256"), b"x").unwrap();
        // Unfinished (no checksum) and unrelated files are ignored.
        std::fs::write(p.join("raft-1.snap"), b"b").unwrap();
        std::fs::write(p.join("notes.txt"), b"c").unwrap();
        let older = SystemTime::now() - std::time::Duration::from_secs(3600);
        let f = std::fs::File::options()
            .write(true)
            .open(p.join("etcd-1.db"))
            .unwrap();
        f.set_modified(older).unwrap();
        std::fs::write(p.join("etcd-2.db"), b"dd").unwrap();
        std::fs::write(p.join("etcd-2.db.sha256"), b"x").unwrap();
        let n = newest(p).unwrap();
        assert_eq!(n.keys().copied().collect::<Vec<_>>(), ["etcd"]);
        assert_eq!(n["etcd"].file, "etcd-2.db");
        assert_eq!(n["etcd"].bytes, 2);
    }
}
