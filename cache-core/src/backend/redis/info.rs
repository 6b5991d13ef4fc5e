//! Server facts for health and stats: `INFO` and `DBSIZE`, of the one
//! server (or the current primary) or summed over a cluster's masters
//! (those that answer).

use super::{RedisBackend, Topology};
use crate::backend::BackendInfo;
use crate::error::BackendError;

impl RedisBackend {
    /// Server facts: `INFO` and `DBSIZE` of the server, or summed over a
    /// cluster's masters.
    pub(super) async fn server_info(&self) -> Result<BackendInfo, BackendError> {
        let nodes: Vec<(String, String, u64)> = match &self.topology {
            Topology::Single(_) | Topology::Sentinel(_) => {
                let info: String = self.query_any(&redis::cmd("INFO")).await?;
                let keys: u64 = self.query_any(&redis::cmd("DBSIZE")).await?;
                vec![(info, String::new(), keys)]
            }
            Topology::Cluster(cluster) => {
                // The masters that answer (a dead one is reported by ping).
                let mut out = Vec::new();
                let mut last = None;
                for node in cluster.masters().await? {
                    let (info, keys) = (redis::cmd("INFO"), redis::cmd("DBSIZE"));
                    let info = cluster.query_node::<String>(&node, &info).await;
                    let keys = cluster.query_node::<u64>(&node, &keys).await;
                    match (info, keys) {
                        (Ok(info), Ok(keys)) => out.push((info, node.host.clone(), keys)),
                        (Err(e), _) | (_, Err(e)) => last = Some(e),
                    }
                }
                if let (true, Some(e)) = (out.is_empty(), last) {
                    return Err(e);
                }
                out
            }
        };
        let sum = |name: &str| -> Option<u64> {
            nodes
                .iter()
                .map(|(info, _, _)| info_field(info, name).and_then(|v| v.parse::<u64>().ok()))
                .sum()
        };
        let primary = match &self.topology {
            Topology::Sentinel(node) => {
                node.current().map(|p| format!("{}:{}", p.addr.0, p.addr.1))
            }
            _ => None,
        };
        Ok(BackendInfo {
            primary,
            version: nodes
                .first()
                .and_then(|(info, _, _)| info_field(info, "redis_version").map(str::to_owned)),
            used_memory_bytes: sum("used_memory"),
            connected_clients: sum("connected_clients"),
            total_keys: Some(nodes.iter().map(|(_, _, k)| k).sum()),
            missing_permissions: self
                .missing_permissions
                .load()
                .as_deref()
                .cloned()
                .unwrap_or_default(),
        })
    }
}

pub(super) fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}
