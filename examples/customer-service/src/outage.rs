//! A switch that makes every database call fail, for fault drills: the
//! chaos suite (`scripts/chaos.sh db-down`) and tests use it to show what
//! callers get while the database is down (stale values where fail-safe
//! allows them, `503` otherwise, never a value an invalidation removed).
//!
//! Off unless asked for: [`DbOutage::set`] from code, or
//! `CHAOS_DB_DOWN_FILE=<path>` in the environment, which makes the database
//! fail while that file exists (`touch` it to start the outage, `rm` it to
//! end it).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable naming the file whose existence fails the database.
pub const DB_DOWN_FILE_VAR: &str = "CHAOS_DB_DOWN_FILE";

/// Whether the database is (made to be) down. Cheap to clone: clones share
/// the switch.
#[derive(Debug, Clone, Default)]
pub struct DbOutage {
    forced: Arc<AtomicBool>,
    file: Option<Arc<PathBuf>>,
}

impl DbOutage {
    /// A switch that is off and stays off unless [`set`](Self::set).
    pub fn new() -> Self {
        DbOutage::default()
    }

    /// A switch that is on while the file named by `CHAOS_DB_DOWN_FILE`
    /// exists (when the variable is set and not empty).
    pub fn from_env() -> Self {
        let file = std::env::var_os(DB_DOWN_FILE_VAR)
            .filter(|v| !v.is_empty())
            .map(|v| Arc::new(PathBuf::from(v)));
        DbOutage {
            file,
            ..DbOutage::default()
        }
    }

    /// Turns the outage on or off.
    pub fn set(&self, down: bool) {
        self.forced.store(down, Ordering::SeqCst);
    }

    /// Whether database calls fail now.
    pub fn is_down(&self) -> bool {
        self.forced.load(Ordering::SeqCst) || self.file.as_ref().is_some_and(|f| f.exists())
    }

    /// `Err` while the outage is on: the error a database call gets.
    pub(crate) fn check(&self) -> Result<(), sqlx::Error> {
        match self.is_down() {
            true => Err(sqlx::Error::PoolTimedOut),
            false => Ok(()),
        }
    }
}
