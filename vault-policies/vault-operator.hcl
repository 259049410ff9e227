# vault-operator: a human operator using the Vault CLI (vault/bao). Manages
# mounts, policies, auth methods and their roles (AppRole secret_id issue for
# the broker included), TOTP keys, the transit keys' configuration, and puts
# the userbot's Telegram app keys. Enough to run vault-policies/apply.sh after
# the first (root-token) run.
#
# Whoever can write policies can grant themselves anything: this policy is
# Vault-admin in practice. The explicit deny on the userbot session below is a
# guard against accidents and a statement in the audit trail, not a boundary.
# Not granted on purpose: KV data other than the app keys, transit
# encrypt/decrypt, totp/code/* (reading a code there would generate one, i.e.
# approve on an admin's behalf).
#
# apply.sh rewrites the mount prefixes "secret/" and "transit/" when
# VAULTGRAM_KV_MOUNT or VAULTGRAM_TRANSIT_MOUNT say otherwise.

# ---- Policies ----------------------------------------------------------------
path "sys/policies/acl" {
  capabilities = ["list"]
}
path "sys/policies/acl/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}
path "sys/policy" {
  capabilities = ["read"]
}
path "sys/policy/*" {
  capabilities = ["create", "read", "update", "delete"]
}

# ---- Secrets engines ---------------------------------------------------------
path "sys/mounts" {
  capabilities = ["read"]
}
path "sys/mounts/*" {
  capabilities = ["create", "read", "update", "delete", "sudo"]
}

# ---- Auth methods and their roles --------------------------------------------
path "sys/auth" {
  capabilities = ["read"]
}
path "sys/auth/*" {
  capabilities = ["create", "read", "update", "delete", "sudo"]
}
path "auth/approle/role" {
  capabilities = ["list"]
}
path "auth/approle/role/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}
path "auth/kubernetes/config" {
  capabilities = ["create", "read", "update"]
}
path "auth/kubernetes/role" {
  capabilities = ["list"]
}
path "auth/kubernetes/role/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}
path "auth/token/roles" {
  capabilities = ["list"]
}
path "auth/token/roles/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

# ---- Tokens: own, and incident response by accessor --------------------------
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/revoke-self" {
  capabilities = ["update"]
}
path "auth/token/lookup-accessor" {
  capabilities = ["update"]
}
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}
# Revoke every token the broker obtained by AppRole login (and its children).
path "sys/leases/revoke-prefix/auth/approle/*" {
  capabilities = ["update", "sudo"]
}
path "sys/capabilities" {
  capabilities = ["update"]
}
path "sys/capabilities-accessor" {
  capabilities = ["update"]
}
path "sys/capabilities-self" {
  capabilities = ["update"]
}

# ---- TOTP keys (admins' approval codes) ---------------------------------------
path "totp/keys" {
  capabilities = ["list"]
}
path "totp/keys/*" {
  capabilities = ["create", "read", "update", "delete", "list"]
}

# ---- Transit key configuration (no encrypt/decrypt, no delete) ---------------
path "transit/keys" {
  capabilities = ["list"]
}
path "transit/keys/*" {
  capabilities = ["create", "read", "update", "list"]
}

# ---- KV: the userbot's app keys and the mount's configuration -----------------
path "secret/data/telegram" {
  capabilities = ["create", "read", "update", "patch"]
}
path "secret/metadata/telegram" {
  capabilities = ["read"]
}
path "secret/config" {
  capabilities = ["read", "update"]
}
path "secret/data/vaultgram/telegram-session" {
  capabilities = ["deny"]
}
path "secret/metadata/vaultgram/telegram-session" {
  capabilities = ["deny"]
}

# ---- Audit devices: read the configuration -------------------------------------
path "sys/audit" {
  capabilities = ["read", "sudo"]
}
