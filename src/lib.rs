//! Berth: game-server instances on Kubernetes behind a Skyport-compatible REST API.
//!
//! - [`crd`] holds the Instance and Node custom resources (the CRDs come from these types).
//! - [`api`] is the HTTP server (REST API, health endpoints).
//! - [`serve`] is `berth serve`, which runs the API and the controllers in one process.
//! - [`telemetry`] sets up logging.
//! - [`names`] holds every label, field manager and group name, said once.

pub mod api;
pub mod console;
pub mod controller;
pub mod crd;
pub mod metrics;
pub mod names;
pub mod serve;
pub mod store;
pub mod telemetry;
