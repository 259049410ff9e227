# vaultgram-backup: the backup job's token (scripts/backup.sh) on OpenBao /
# Vault with integrated raft storage. It can take a raft snapshot and do
# nothing else: no restore (that is `update` on the same path, an operator's
# act), no secret read. A raft snapshot is encrypted by the barrier; it is
# useless without the unseal keys (or the transit unsealer), which are kept
# apart from it (docs/DISASTER-RECOVERY.md).
path "sys/storage/raft/snapshot" {
  capabilities = ["read"]
}
