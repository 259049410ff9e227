//! The test table. Each entry is `(name, fn(&Env))`; a panic fails the test.

use crate::common::Env;

mod cli;
mod dev_stack;
mod etcd;
mod policy_matrix;
mod vault;
mod vault_auth;
mod vault_engines;

pub type TestFn = fn(&Env);

pub fn all() -> Vec<(&'static str, TestFn)> {
    let mut t: Vec<(&'static str, TestFn)> = Vec::new();
    t.extend(etcd::TESTS);
    t.extend(vault::TESTS);
    t.extend(policy_matrix::TESTS);
    t.extend(vault_auth::TESTS);
    t.extend(vault_engines::TESTS);
    t.extend(cli::TESTS);
    t.extend(dev_stack::TESTS);
    t
}
