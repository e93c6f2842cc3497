//! The `squall` process: runs a topology version's timely workers beside an HTTP API, the control
//! plane that deploys versions side by side, and the dev tools that feed them.
#![warn(missing_docs)]

pub mod client;
pub mod cluster;
pub mod control;
pub mod counters;
pub mod diff;
pub mod files;
pub mod generate;
pub mod http;
pub mod kafka;
pub mod lease;
pub mod promtext;
pub mod ready;
pub mod runfile;
pub mod runner;
pub mod telemetry;
pub mod values;
