//! Tells the CQL store which version of each topology is promoted: the `promoted_versions`
//! table (one row per topology) that readers of the profile tables look up, rewritten after
//! every change of the registry's promoted versions (promote, rollback, a first deploy). Only
//! topologies whose promoted version writes a profile table (`[feed] profile = true`) get a row.
//!
//! One task writes, always towards the latest registry: a promote followed quickly by a
//! rollback ends with the rollback's row, never the other way round. A store that is down
//! delays the row (retried every second, with a warning), never the command.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use scylla::client::session::Session;
use squall_feeds::FeedError;
use tokio::sync::watch;

/// What a topology's row says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promoted {
    /// The promoted group id.
    pub group_id: String,
    /// Its version.
    pub version: u32,
    /// CQL contact points of its store.
    pub nodes: String,
    /// Its keyspace.
    pub keyspace: String,
}

/// The rows wanted, by topology; the writer task follows it.
pub struct Promotions {
    wanted: watch::Sender<BTreeMap<String, Promoted>>,
}

impl Promotions {
    /// Starts the writer task (on the current tokio runtime).
    pub fn start() -> Promotions {
        let (wanted, rx) = watch::channel(BTreeMap::new());
        tokio::spawn(write(rx));
        Promotions { wanted }
    }

    /// The rows wanted now.
    pub fn want(&self, rows: BTreeMap<String, Promoted>) {
        self.wanted.send_if_modified(|w| {
            let changed = *w != rows;
            *w = rows;
            changed
        });
    }
}

/// Writes the wanted rows that differ from what was written, until the sender is gone.
async fn write(mut rx: watch::Receiver<BTreeMap<String, Promoted>>) {
    let mut written: BTreeMap<String, Promoted> = BTreeMap::new();
    let mut sessions: HashMap<String, Session> = HashMap::new();
    let mut warned = false;
    loop {
        let wanted = rx.borrow_and_update().clone();
        let mut failed = false;
        for (topology, p) in &wanted {
            if written.get(topology) == Some(p) {
                continue;
            }
            match record(&mut sessions, topology, p).await {
                Ok(()) => {
                    tracing::info!(topology, group_id = %p.group_id, "promoted_versions updated");
                    written.insert(topology.clone(), p.clone());
                }
                Err(e) => {
                    failed = true;
                    if !warned {
                        tracing::warn!(topology, group_id = %p.group_id, error = %e, "cannot update promoted_versions; retrying");
                        warned = true;
                    }
                }
            }
        }
        if !failed {
            warned = false;
        }
        let next = if failed {
            // Retry in a second, or sooner if the wanted rows change.
            tokio::time::timeout(Duration::from_secs(1), rx.changed()).await.unwrap_or(Ok(()))
        } else {
            rx.changed().await
        };
        if next.is_err() {
            return;
        }
    }
}

async fn record(sessions: &mut HashMap<String, Session>, topology: &str, p: &Promoted) -> Result<(), FeedError> {
    if !sessions.contains_key(&p.nodes) {
        let session = squall_feeds::profile::connect(&p.nodes).await?;
        sessions.insert(p.nodes.clone(), session);
    }
    let session = &sessions[&p.nodes];
    let r = squall_feeds::profile::record_promotion(session, &p.keyspace, topology, &p.group_id, p.version).await;
    if r.is_err() {
        // A fresh connection next time, in case this one is what broke.
        sessions.remove(&p.nodes);
    }
    r
}
