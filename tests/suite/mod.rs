//! The test table. Each entry is `(name, fn(&Env))`; a panic fails the test.

use crate::common::Env;

mod approvals;
mod approvals_quorum;
mod cli;
mod commands;
mod commands_domain;
mod commands_kv;
mod containment;
mod dev_stack;
mod doctor;
mod etcd;
mod failure;
mod gate;
mod http;
mod kubernetes;
mod migration;
mod monitoring;
mod policy_matrix;
mod security;
mod socket;
mod telegram;
mod telegram_chat;
mod telegram_failover;
mod vault;
mod vault_auth;
mod vault_engines;
mod vault_ha;

pub type TestFn = fn(&Env);

pub fn all() -> Vec<(&'static str, TestFn)> {
    let mut t: Vec<(&'static str, TestFn)> = Vec::new();
    t.extend(etcd::TESTS);
    t.extend(vault::TESTS);
    t.extend(policy_matrix::TESTS);
    t.extend(vault_auth::TESTS);
    t.extend(vault_engines::TESTS);
    t.extend(cli::TESTS);
    t.extend(commands::TESTS);
    t.extend(commands_domain::TESTS);
    t.extend(commands_kv::TESTS);
    t.extend(approvals::TESTS);
    t.extend(approvals_quorum::TESTS);
    t.extend(gate::TESTS);
    t.extend(socket::TESTS);
    t.extend(dev_stack::TESTS);
    t.extend(doctor::TESTS);
    t.extend(migration::TESTS);
    t.extend(failure::TESTS);
    t.extend(http::TESTS);
    t.extend(monitoring::TESTS);
    t.extend(security::TESTS);
    t.extend(containment::TESTS);
    t.extend(telegram::TESTS);
    t.extend(telegram_chat::TESTS);
    t.extend(telegram_failover::TESTS);
    t.extend(kubernetes::TESTS);
    t
}

/// Tests of what only HashiCorp Vault on etcd has (two HA nodes on one
/// storage); run with `VAULTGRAM_IT_SERVER=vault` only.
pub fn vault_only() -> Vec<(&'static str, TestFn)> {
    vault_ha::TESTS.to_vec()
}
