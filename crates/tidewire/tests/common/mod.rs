//! Helpers of the integration tests.

pub mod certs;
pub mod fairness;
pub mod proxies;
