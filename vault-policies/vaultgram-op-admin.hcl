# vaultgram-op-admin: the child token the broker mints (token role
# "vaultgram-operator") for an operator whose role is "admin". Full KV v2 on
# the vaultgram mount, transit encryption as a service, response wrapping.
#
# Not granted: the userbot's own MTProto session (explicit deny below), the
# plaintext of anything encrypted with the broker's session key "vaultgram",
# any sys/ or auth/ administration. Do not combine this policy with a
# vaultgram-op-agent-* policy on one token: the agent template's explicit
# denies (e.g. on secret/data/telegram) would then apply to the admin too.
#
# apply.sh rewrites the mount prefixes "secret/" and "transit/" (and the
# transit key name "vaultgram") when VAULTGRAM_KV_MOUNT, VAULTGRAM_TRANSIT_MOUNT
# or VAULTGRAM_TRANSIT_KEY say otherwise.

# ---- KV v2: everything under the mount ---------------------------------------
path "secret/data/*" {
  capabilities = ["create", "read", "update", "patch", "delete"]
}
# Metadata: read, list and delete (/kv metadata delete, which needs a second
# admin). No writes: setting max_versions or delete_version_after on a key
# would destroy or delete versions without anyone's approval.
path "secret/metadata/*" {
  capabilities = ["read", "delete", "list"]
}
# The mount's max_versions, so the broker can refuse a write that would push a
# live version out of a secret's history (see ARCHITECTURE.md).
path "secret/config" {
  capabilities = ["read"]
}
path "secret/delete/*" {
  capabilities = ["update"]
}
path "secret/undelete/*" {
  capabilities = ["update"]
}
path "secret/destroy/*" {
  capabilities = ["update"]
}
path "secret/subkeys/*" {
  capabilities = ["read"]
}

# ---- ...except the userbot's MTProto session ---------------------------------
# It is the userbot's identity: only the broker's own token (login flow) reads
# or writes it. Admins see that it exists and its version history, no more.
#
# Every rule comes twice: the exact path, and the same path with a trailing
# slash ("telegram-session/*" also matches "telegram-session/"). Vault accepts
# DELETE on a path ending in "/" and KV v2 applies it to the key without the
# slash, so with the exact rule alone an admin's
# `DELETE secret/metadata/vaultgram/telegram-session/` (matched by the
# secret/metadata/* glob) would delete the session with all its versions.
# sys/capabilities trims the slash and does not show this; the integration
# test tests/suite/policy_matrix.rs makes the real calls.
path "secret/data/vaultgram/telegram-session" {
  capabilities = ["deny"]
}
path "secret/data/vaultgram/telegram-session/*" {
  capabilities = ["deny"]
}
path "secret/subkeys/vaultgram/telegram-session" {
  capabilities = ["deny"]
}
path "secret/subkeys/vaultgram/telegram-session/*" {
  capabilities = ["deny"]
}
path "secret/delete/vaultgram/telegram-session" {
  capabilities = ["deny"]
}
path "secret/delete/vaultgram/telegram-session/*" {
  capabilities = ["deny"]
}
path "secret/undelete/vaultgram/telegram-session" {
  capabilities = ["deny"]
}
path "secret/undelete/vaultgram/telegram-session/*" {
  capabilities = ["deny"]
}
path "secret/destroy/vaultgram/telegram-session" {
  capabilities = ["deny"]
}
path "secret/destroy/vaultgram/telegram-session/*" {
  capabilities = ["deny"]
}
# Exact path beats the secret/metadata/* glob: read only (no write, no delete).
path "secret/metadata/vaultgram/telegram-session" {
  capabilities = ["read"]
}
path "secret/metadata/vaultgram/telegram-session/*" {
  capabilities = ["deny"]
}

# ---- Transit: encryption as a service ----------------------------------------
# "create" on encrypt lets an admin start using a new key by encrypting with it.
path "transit/encrypt/*" {
  capabilities = ["create", "update"]
}
path "transit/decrypt/*" {
  capabilities = ["update"]
}
path "transit/rewrap/*" {
  capabilities = ["update"]
}
path "transit/datakey/plaintext/*" {
  capabilities = ["update"]
}
path "transit/datakey/wrapped/*" {
  capabilities = ["update"]
}
path "transit/keys" {
  capabilities = ["list"]
}
path "transit/keys/*" {
  capabilities = ["read", "list"]
}
path "transit/keys/+/rotate" {
  capabilities = ["update"]
}
# The broker's session key: admins may rotate/rewrap it, never decrypt with it
# (that would turn a copy of the session ciphertext into the session).
path "transit/decrypt/vaultgram" {
  capabilities = ["deny"]
}
path "transit/datakey/plaintext/vaultgram" {
  capabilities = ["deny"]
}

# ---- Response wrapping and the token itself ----------------------------------
# -wrap-ttl on a Vault call is the X-Vault-Wrap-TTL header and needs no grant;
# sys/wrapping/wrap is for replies the broker composes (new agent tokens,
# MTProto links) and wraps with this child token.
path "sys/wrapping/wrap" {
  capabilities = ["update"]
}
path "sys/wrapping/lookup" {
  capabilities = ["update"]
}
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
