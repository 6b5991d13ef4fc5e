//! The start-up permission probe of the Redis backend.

use std::sync::Arc;

use redis::{Cmd, Value};

use super::cluster::slot_of;
use super::connection::SingleNode;
use super::{RedisBackend, SET_IF_LEASE, Topology, keyed_cmd};
use crate::error::{BackendError, ErrorKind, FIX_PERMISSION};

impl RedisBackend {
    /// Finds the commands the connection's ACL user may not run on this
    /// cache's keys (`{namespace}:*`), by sending each command the backend
    /// uses in a form that changes nothing (a `SET ... XX` or `PEXPIRE` of an
    /// absent key, an `INCRBY` by a non-number, an `EVALSHA` of an unknown
    /// script...): Redis checks permissions before it runs a command, so
    /// `NOPERM` answers exactly the question. The result is kept for
    /// [`Backend::info`]. Other failures (unreachable server) are returned.
    /// `wait`: invalidations wait for replicas (`WAIT`).
    pub(crate) async fn check_permissions(
        &self,
        namespace: &str,
        wait: bool,
    ) -> Result<Vec<String>, BackendError> {
        let key = format!("{namespace}:%acl-probe");
        let key = key.as_str();
        let mut probes: Vec<(&str, Cmd)> = vec![
            ("get", keyed_cmd("GET", [key])),
            ("mget", keyed_cmd("MGET", [key])),
            ("exists", keyed_cmd("EXISTS", [key])),
            ("pttl", keyed_cmd("PTTL", [key])),
            ("unlink", keyed_cmd("UNLINK", [key])),
            ("del", keyed_cmd("DEL", [key])),
            (
                "set",
                redis::cmd("SET")
                    .arg(key)
                    .arg("")
                    .arg("PX")
                    .arg(1)
                    .arg("XX")
                    .clone(),
            ),
            ("pexpire", redis::cmd("PEXPIRE").arg(key).arg(1).clone()),
            (
                "incrby",
                redis::cmd("INCRBY").arg(key).arg("not-a-number").clone(),
            ),
            (
                "evalsha",
                redis::cmd("EVALSHA")
                    .arg("0".repeat(40))
                    .arg(1)
                    .arg(key)
                    .clone(),
            ),
            (
                "script|load",
                redis::cmd("SCRIPT").arg("LOAD").arg(SET_IF_LEASE).clone(),
            ),
            (
                "scan",
                redis::cmd("SCAN")
                    .arg(0)
                    .arg("MATCH")
                    .arg(key)
                    .arg("COUNT")
                    .arg(1)
                    .clone(),
            ),
            ("ping", redis::cmd("PING")),
            ("info", redis::cmd("INFO").arg("server").clone()),
            ("dbsize", redis::cmd("DBSIZE")),
            // Reads of a key whose last read timed out check its size first.
            ("strlen", keyed_cmd("STRLEN", [key])),
            // The tracking connection (prefix generations held in process,
            // the near cache) speaks RESP3 and turns tracking on.
            ("hello", redis::cmd("HELLO")),
            (
                "client|tracking",
                redis::cmd("CLIENT").arg("TRACKING").arg("OFF").clone(),
            ),
        ];
        match self.topology {
            Topology::Cluster(_) => {
                probes.push(("cluster|slots", redis::cmd("CLUSTER").arg("SLOTS").clone()));
            }
            // Finding the primary asks it for its role, from the sentinels'
            // lookup and before commands go to it.
            Topology::Sentinel(_) => probes.push(("role", redis::cmd("ROLE"))),
            Topology::Single(_) => {}
        }
        if wait {
            // `WAIT 0 0` returns at once: no replica is asked for.
            probes.push(("wait", redis::cmd("WAIT").arg(0).arg(0).clone()));
        }
        // The server that answers: the single one, the current primary,
        // or on a cluster the master serving the probe key.
        let primary = match &self.topology {
            Topology::Sentinel(sentinel) => Some(sentinel.primary()?),
            _ => None,
        };
        let master = match &self.topology {
            Topology::Cluster(cluster) => cluster.owner_of(slot_of(key.as_bytes())),
            _ => None,
        };
        let node: &SingleNode = match (&self.topology, &primary, &master) {
            (Topology::Single(node), _, _) => node,
            (Topology::Sentinel(_), Some(primary), _) => &primary.node,
            (Topology::Cluster(_), _, Some(master)) => &master.link,
            _ => {
                return Err(BackendError::new(
                    ErrorKind::Connection,
                    "no Redis Cluster master known",
                ));
            }
        };
        let mut missing = Vec::new();
        for (name, cmd) in &probes {
            // Not through `query`: a refused probe is an answer, not an
            // error to log (the caller reports the list once).
            let (mut conn, _) = match node.current() {
                Some(found) => found,
                None => node.connection().await?,
            };
            let answer: redis::RedisResult<Value> = cmd.query_async(&mut conn).await;
            match answer.map_err(BackendError::from) {
                Ok(_) => {}
                Err(e) if e.kind == ErrorKind::Auth && e.message.ends_with(FIX_PERMISSION) => {
                    missing.push((*name).to_owned());
                }
                Err(e) if e.kind.is_availability() => return Err(e),
                Err(_) => {} // the command ran and refused the probe's arguments
            }
        }
        self.missing_permissions
            .store(Some(Arc::new(missing.clone())));
        Ok(missing)
    }
}
