//! `sys/` endpoints vaultrs does not model in a way OpenBao answers.
//!
//! vaultrs 0.8's `sys/health` response requires `performance_standby`,
//! which OpenBao does not send; this endpoint reads only the fields both
//! servers return, and asks for HTTP 200 in every state so the body is
//! always there to read.

use rustify_derive::Endpoint;
use serde::{Deserialize, Serialize};

#[derive(Endpoint, Serialize)]
#[endpoint(path = "/sys/health", response = "HealthResponse")]
pub struct HealthRequest {
    #[endpoint(query)]
    pub standbyok: bool,
    #[endpoint(query)]
    pub sealedcode: u16,
    #[endpoint(query)]
    pub uninitcode: u16,
}

impl HealthRequest {
    /// 200 whatever the state: the caller reads the state from the body.
    pub fn always_ok() -> Self {
        HealthRequest {
            standbyok: true,
            sealedcode: 200,
            uninitcode: 200,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct HealthResponse {
    pub initialized: bool,
    pub sealed: bool,
    pub standby: bool,
}
