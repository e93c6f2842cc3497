//! The `squall` process: runs a topology version's timely workers beside an HTTP API, and the dev tools that feed it.
#![warn(missing_docs)]

pub mod client;
pub mod cluster;
pub mod counters;
pub mod generate;
pub mod http;
pub mod kafka;
pub mod promtext;
pub mod ready;
pub mod registry;
pub mod runner;
pub mod server;
pub mod telemetry;
pub mod values;
