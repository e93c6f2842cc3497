//! The `squall` process: runs a topology version's timely workers beside an HTTP API, the control
//! plane that deploys versions side by side, and the dev tools that feed them.
//!
//! Two halves, each a folder: [`version`] (the version runtime, `squall run`) and [`control`] (the
//! control plane, `squall server`), which reaches versions only through their processes, runtime
//! files and HTTP API. The modules at the top are what both halves and the binaries share: atomic
//! files, values with rules, Kafka metadata, the changelog diff, telemetry, the readiness line;
//! besides them [`client`] (the CLI's client of the control plane) and [`generate`] (dev data).
#![warn(missing_docs)]

pub mod archive_cli;
pub mod backfill;
pub mod changelog_diff;
pub mod client;
pub mod control;
pub mod files;
pub mod generate;
pub mod kafka;
pub mod ready;
pub mod telemetry;
pub mod training;
pub mod values;
pub mod version;
