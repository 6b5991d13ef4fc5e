//! Server facts for health and stats: `INFO` and `DBSIZE`, of the one
//! server (or the current primary) or summed over a cluster's masters.

use super::{RedisBackend, Topology, parse};
use crate::backend::BackendInfo;
use crate::error::BackendError;

impl RedisBackend {
    /// Server facts: `INFO` and `DBSIZE` of the server, or summed over a
    /// cluster's masters.
    pub(super) async fn server_info(&self) -> Result<BackendInfo, BackendError> {
        let nodes: Vec<(String, String, u64)> = match &self.topology {
            Topology::Single(_) | Topology::Sentinel(_) => {
                let info: String = self.query(&redis::cmd("INFO")).await?;
                let keys: u64 = self.query(&redis::cmd("DBSIZE")).await?;
                vec![(info, String::new(), keys)]
            }
            Topology::Cluster(node) => {
                let mut out = Vec::new();
                for (host, port) in Self::masters(node).await? {
                    let info: String =
                        parse(Self::on_node(node, &host, port, redis::cmd("INFO")).await?)?;
                    let keys: u64 =
                        parse(Self::on_node(node, &host, port, redis::cmd("DBSIZE")).await?)?;
                    out.push((info, host, keys));
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
