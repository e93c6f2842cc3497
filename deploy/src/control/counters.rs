//! The control plane's metrics: every `metrics::` series the server itself publishes is made here.

use super::registry::Deployment;
use crate::kafka::PartitionLag;

/// Sets `squall_consumer_lag{topology, version, group_id, topic, partition}` of one partition.
pub(super) fn consumer_lag(d: &Deployment, p: &PartitionLag) {
    metrics::gauge!(
        "squall_consumer_lag",
        "topology" => d.topology.clone(),
        "version" => d.version.to_string(),
        "group_id" => d.group_id.to_string(),
        "topic" => p.topic.clone(),
        "partition" => p.partition.to_string()
    )
    .set(p.lag as f64);
}
