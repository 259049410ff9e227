# vaultgram-broker: the broker's OWN token (AppRole role "vaultgram", or the
# Kubernetes auth role of the same name). It holds almost nothing itself:
# every operator command runs with a child token minted through the token
# role "vaultgram-operator", which carries that operator's policies.
#
# Deliberately absent: sys/policy*, sys/policies/*, auth/token/create (without
# the role), auth/token/create-orphan, sys/mounts*, sys/auth*, and every KV
# path except the two below.
#
# apply.sh rewrites the mount prefixes "secret/" and "transit/" (and the
# transit key name "vaultgram") when VAULTGRAM_KV_MOUNT, VAULTGRAM_TRANSIT_MOUNT
# or VAULTGRAM_TRANSIT_KEY say otherwise; this file is valid as it stands for
# the default layout.

# Child tokens for operators, only through the token role. The role decides
# which policies a child may carry (vaultgram-op-admin, vaultgram-op-agent-*)
# and forbids root, vaultgram-broker and vault-operator.
path "auth/token/create/vaultgram-operator" {
  capabilities = ["update"]
}

# Its own token.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/revoke-self" {
  capabilities = ["update"]
}
path "sys/capabilities-self" {
  capabilities = ["update"]
}

# Suspending an operator (/operator suspend, [security]) revokes every child
# token minted for it, by the accessors recorded in etcd at mint time, from
# whichever replica handles the suspension. An accessor can revoke a token,
# never use it; the broker could already make and drop tokens at will.
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}

# The userbot's Telegram app keys (api_id, api_hash), put by a Vault operator.
path "secret/data/telegram" {
  capabilities = ["read"]
}

# The userbot's MTProto session, transit-encrypted. Only the broker's login
# flow reads or writes it; every other vaultgram policy denies it.
path "secret/data/vaultgram/telegram-session" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/vaultgram/telegram-session" {
  capabilities = ["read"]
}

# Transit, only the broker's own key, only encrypt/decrypt.
path "transit/encrypt/vaultgram" {
  capabilities = ["update"]
}
path "transit/decrypt/vaultgram" {
  capabilities = ["update"]
}

# Validate an approving admin's TOTP code (POST totp/code/NAME code=...).
# "update" only: "read" on totp/code/NAME would GENERATE a code for keys
# created with generate=true, i.e. let the broker approve on an admin's behalf.
path "totp/code/*" {
  capabilities = ["update"]
}

# Response-wrapping tokens. Unwrapping the wrapped AppRole secret_id at start-up
# is authorised by the wrapping token itself (the broker has no token yet);
# these grants let the broker inspect/unwrap a wrapping token with its own
# token, e.g. to check creation_path before use.
path "sys/wrapping/lookup" {
  capabilities = ["update"]
}
path "sys/wrapping/unwrap" {
  capabilities = ["update"]
}
