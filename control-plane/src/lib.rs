//! HaIS control plane: gateway, storage, event bus, auth and the JA4 service in one library,
//! run by the `hais-control-plane` binary either all in one process (embedded SQLite and an
//! in-process bus, the default) or one service per process (PostgreSQL and Redis).
//!
//! Where things live:
//! * [`config`]: configuration keys, their `HAIS_*` variables and defaults.
//! * [`app`]: start-up, background tasks and graceful shutdown.
//! * [`http`]: the API's error shape and input extractors (below services and gateway).
//! * [`gateway`]: the router of a process, the split-mode proxy.
//! * [`store`]: the storage interface and its SQLite and PostgreSQL implementations.
//! * [`bus`]: the event bus, in-process or Redis.
//! * [`auth`]: users, roles, JWTs, service tokens.
//! * [`services`]: the JA4 service and the (placeholder) others.
//! * [`server`]: the HTTP(S) serving loop: connection cap, timeouts, TLS, redirect.
//! * [`metrics`]: the process's counters. [`ops`]: health, readiness, `/metrics`.
//!   [`openapi`]: the API document.

pub mod app;
pub mod auth;
pub mod bus;
pub mod bus_routes;
pub mod config;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod ocsf;
pub mod openapi;
pub mod ops;
pub mod secure_fs;
pub mod server;
pub mod service;
pub mod services;
pub mod state;
pub mod store;

pub use app::{App, StartError};
pub use config::Config;
pub use service::ServiceName;
