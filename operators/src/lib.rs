//! squall's dataflow: events in, per-user attributes out, as timely operators named after their verbs.
#![warn(missing_docs)]

pub mod activity;
pub mod attributes;
pub mod backfill;
pub mod checkpoint;
pub mod checkpoint_cql;
pub mod checkpoint_dir;
pub mod compare;
pub mod counters;
pub mod cql_schema;
pub mod dead_letter;
pub mod dedup;
pub mod enrich;
pub mod epoch;
pub mod event;
pub mod key_groups;
pub mod maintain;
pub mod partition;
pub mod source;
pub mod store;
pub mod watermark;

pub use activity::{Activity, What};
pub use attributes::{AttributeDecl, Attributes, Declaration, Evidence, Plan, UserSnapshot, UserState, Value};
pub use dead_letter::DeadLetterTo;
pub use enrich::EnrichWith;
pub use epoch::Epoch;
pub use event::{DecodeError, DecodeLimits, DlqReason, Event, EventKind};
pub use key_groups::{KeyGroups, user_hash};
pub use maintain::{CheckpointHook, MaintainAttributes, Restore};
pub use source::{Alignment, ConsumeKafka, DeadLetter, Partition, SourceConfig, SourceStreams, StartFrom};
pub use store::UserStore;
pub use watermark::Progress;
