//! The settings of loads read from the environment: fail-safe and TTL
//! jitter for every read-through call of the cache.

use std::time::Duration;

use super::{CacheConfig, invalid, parse_num};
use crate::error::ConfigError;

/// Reads `CACHE_FAIL_SAFE_MAX_STALE_S`, `CACHE_FAIL_SAFE_THROTTLE_S` and
/// `CACHE_TTL_JITTER` into `config`.
pub(super) fn from_env(
    get: &impl Fn(&str) -> Option<String>,
    config: &mut CacheConfig,
) -> Result<(), ConfigError> {
    if let Some(v) = get("CACHE_FAIL_SAFE_MAX_STALE_S") {
        let secs = parse_num("CACHE_FAIL_SAFE_MAX_STALE_S", &v, 0, 365 * 86_400)?;
        config.fail_safe_max_stale = (secs > 0).then(|| Duration::from_secs(secs));
    }
    if let Some(v) = get("CACHE_FAIL_SAFE_THROTTLE_S") {
        config.fail_safe_throttle = Some(Duration::from_secs(parse_num(
            "CACHE_FAIL_SAFE_THROTTLE_S",
            &v,
            1,
            86_400,
        )?));
    }
    if let Some(v) = get("CACHE_TTL_JITTER") {
        config.ttl_jitter = match v.parse::<f64>() {
            Ok(j) if (0.0..=0.5).contains(&j) => j,
            _ => {
                return Err(invalid(
                    "CACHE_TTL_JITTER",
                    &v,
                    "expected a fraction from 0 to 0.5, e.g. 0.1 for ±10%",
                ));
            }
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fail_safe_and_jitter() {
        let env = |name: &str| match name {
            "CACHE_FAIL_SAFE_MAX_STALE_S" => Some("3600".to_owned()),
            "CACHE_FAIL_SAFE_THROTTLE_S" => Some("5".to_owned()),
            "CACHE_TTL_JITTER" => Some("0.1".to_owned()),
            _ => None,
        };
        let config = CacheConfig::from_lookup(env).unwrap();
        assert_eq!(config.fail_safe_max_stale, Some(Duration::from_secs(3600)));
        assert_eq!(config.fail_safe_throttle, Some(Duration::from_secs(5)));
        assert!((config.ttl_jitter - 0.1).abs() < 1e-9);
        let bad = CacheConfig::from_lookup(|n| (n == "CACHE_TTL_JITTER").then(|| "2".to_owned()));
        assert!(bad.unwrap_err().to_string().contains("CACHE_TTL_JITTER"));
    }
}
