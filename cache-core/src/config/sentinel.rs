//! Redis Sentinel settings: the sentinels, the name they monitor the
//! primary under, and how the primary is reached, read and checked.

use redis::{ConnectionAddr, IntoConnectionInfo};

use super::{RedisTarget, invalid, validate_url};
use crate::error::ConfigError;
use crate::redact::redact_url;

/// Names used in Sentinel errors: the environment variables, or the
/// builder methods.
#[derive(Clone, Copy)]
pub(crate) struct SentinelVariables {
    pub(crate) sentinels: &'static str,
    pub(crate) master: &'static str,
    pub(crate) data: &'static str,
}

impl SentinelVariables {
    pub(crate) const ENV: SentinelVariables = SentinelVariables {
        sentinels: "REDIS_SENTINELS",
        master: "REDIS_SENTINEL_MASTER",
        data: "REDIS_SENTINEL_DATA_URL",
    };
    pub(crate) const BUILDER: SentinelVariables = SentinelVariables {
        sentinels: "redis_sentinel",
        master: "redis_sentinel",
        data: "sentinel_data_url",
    };
}

/// The Sentinel target the environment names, if any.
pub(super) fn from_env(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Option<RedisTarget>, ConfigError> {
    let names = SentinelVariables::ENV;
    let (list, master, data) = (get(names.sentinels), get(names.master), get(names.data));
    let Some(list) = list else {
        if let Some(master) = master {
            return Err(invalid(
                names.master,
                &master,
                "needs REDIS_SENTINELS, the sentinels to ask for the primary",
            ));
        }
        if let Some(data) = data {
            return Err(invalid(
                names.data,
                &redact_url(&data),
                "needs REDIS_SENTINELS, the sentinels to ask for the primary",
            ));
        }
        return Ok(None);
    };
    let sentinels: Vec<String> = list
        .split(',')
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    let Some(master) = master else {
        return Err(invalid(
            names.master,
            "",
            "required with REDIS_SENTINELS: the name the sentinels monitor the primary under",
        ));
    };
    check(names, &sentinels, &master, data.as_deref())?;
    Ok(Some(RedisTarget::Sentinel {
        sentinels,
        master,
        data_url: data,
    }))
}

/// Checks a Sentinel target: every sentinel URL parses, is reached over
/// TCP, names no database and uses the same scheme and credentials as the
/// others (one set of sentinel credentials); the master name is one word;
/// the data URL, if any, parses.
pub(crate) fn check(
    names: SentinelVariables,
    sentinels: &[String],
    master: &str,
    data_url: Option<&str>,
) -> Result<(), ConfigError> {
    if sentinels.is_empty() {
        return Err(invalid(
            names.sentinels,
            "",
            "expected at least one sentinel URL (redis://host:26379)",
        ));
    }
    let mut first: Option<(bool, Option<String>, Option<String>)> = None;
    for url in sentinels {
        validate_url(names.sentinels, url)?;
        let bad = |reason: &str| ConfigError::InvalidUrl {
            variable: names.sentinels,
            url: redact_url(url),
            reason: reason.to_owned(),
        };
        let info = url
            .as_str()
            .into_connection_info()
            .map_err(|e| bad(&e.to_string()))?;
        let tls = match info.addr() {
            ConnectionAddr::Tcp(..) => false,
            ConnectionAddr::TcpTls { .. } => true,
            _ => return Err(bad("a sentinel is reached over TCP: redis:// or rediss://")),
        };
        let settings = info.redis_settings();
        if settings.db() != 0 {
            return Err(bad(
                "a sentinel has no databases; give the database in the data URL (REDIS_SENTINEL_DATA_URL)",
            ));
        }
        let this = (
            tls,
            settings.username().map(str::to_owned),
            settings.password().map(str::to_owned),
        );
        match &first {
            None => first = Some(this),
            Some(first) if *first != this => {
                return Err(bad(
                    "every sentinel URL must use the same scheme, user and password",
                ));
            }
            Some(_) => {}
        }
    }
    if master.is_empty()
        || master.len() > 256
        || master.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            names.master,
            master,
            "expected the name of a `sentinel monitor` line: one word, up to 256 characters",
        ));
    }
    if let Some(url) = data_url {
        validate_url(names.data, url)?;
        let info = url
            .into_connection_info()
            .map_err(|e| invalid(names.data, &redact_url(url), &e.to_string()))?;
        if !matches!(
            info.addr(),
            ConnectionAddr::Tcp(..) | ConnectionAddr::TcpTls { .. }
        ) {
            return Err(ConfigError::InvalidUrl {
                variable: names.data,
                url: redact_url(url),
                reason: "the primary is reached over TCP: redis:// or rediss://".to_owned(),
            });
        }
    }
    Ok(())
}

/// Whether any connection of the target uses TLS (the sentinels or the
/// data nodes).
pub(super) fn uses_tls(sentinels: &[String], data_url: Option<&str>) -> bool {
    let data_tls = match data_url {
        Some(url) => url.starts_with("rediss://"),
        None => false,
    };
    data_tls || sentinels.iter().any(|u| u.starts_with("rediss://"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CacheConfig;

    fn from(vars: &[(&str, &str)]) -> Result<CacheConfig, ConfigError> {
        CacheConfig::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn sentinels_and_a_master_name_make_a_sentinel_target() {
        let config = from(&[
            (
                "REDIS_SENTINELS",
                "redis://:pw@10.0.0.1:26379, redis://:pw@10.0.0.2:26379",
            ),
            ("REDIS_SENTINEL_MASTER", "mymaster"),
            ("REDIS_SENTINEL_DATA_URL", "redis://app:secret@primary/2"),
        ])
        .unwrap();
        let Some(RedisTarget::Sentinel {
            sentinels,
            master,
            data_url,
        }) = &config.redis
        else {
            panic!("{:?}", config.redis);
        };
        assert_eq!(sentinels.len(), 2);
        assert_eq!(master, "mymaster");
        assert_eq!(data_url.as_deref(), Some("redis://app:secret@primary/2"));
        let shown = format!("{:?} {}", config.redis, config.target_description());
        assert!(
            !shown.contains("pw@") && !shown.contains("secret"),
            "{shown}"
        );
        assert!(shown.contains("mymaster via sentinels redis://:***@10.0.0.1:26379"));
    }

    #[test]
    fn malformed_sentinel_settings_name_their_variable() {
        let cases: [(&[(&str, &str)], &str); 9] = [
            (
                &[
                    ("REDIS_SENTINELS", "redis://h:1"),
                    ("REDIS_SENTINEL_MASTER", "m"),
                    ("REDIS_CLUSTER", "true"),
                ],
                "REDIS_CLUSTER",
            ),
            (
                &[("REDIS_SENTINELS", "redis://h:1")],
                "REDIS_SENTINEL_MASTER",
            ),
            (&[("REDIS_SENTINEL_MASTER", "m")], "REDIS_SENTINEL_MASTER"),
            (
                &[("REDIS_SENTINEL_DATA_URL", "redis://primary")],
                "REDIS_SENTINEL_DATA_URL",
            ),
            (
                &[
                    ("REDIS_SENTINELS", "http://h:1"),
                    ("REDIS_SENTINEL_MASTER", "m"),
                ],
                "REDIS_SENTINELS",
            ),
            (
                &[
                    ("REDIS_SENTINELS", "redis://h:1/3"),
                    ("REDIS_SENTINEL_MASTER", "m"),
                ],
                "REDIS_SENTINELS",
            ),
            (
                &[
                    ("REDIS_SENTINELS", "redis://:a@h:1,redis://:b@h:2"),
                    ("REDIS_SENTINEL_MASTER", "m"),
                ],
                "REDIS_SENTINELS",
            ),
            (
                &[
                    ("REDIS_SENTINELS", "redis://h:1"),
                    ("REDIS_SENTINEL_MASTER", "two words"),
                ],
                "REDIS_SENTINEL_MASTER",
            ),
            (
                &[
                    ("REDIS_SENTINELS", "redis://h:1"),
                    ("REDIS_SENTINEL_MASTER", "m"),
                    ("REDIS_URL", "redis://h:2"),
                ],
                "REDIS_URL",
            ),
        ];
        for (vars, variable) in cases {
            let error = from(vars).unwrap_err();
            let named = match &error {
                ConfigError::Invalid { variable, .. }
                | ConfigError::InvalidUrl { variable, .. } => *variable,
                other => panic!("{other:?}"),
            };
            assert_eq!(named, variable, "{vars:?}: {error}");
            assert!(!error.to_string().contains(":a@"), "{error}");
        }
    }

    #[test]
    fn waiting_for_replicas_is_read_and_refused_on_a_cluster() {
        let config = from(&[
            ("REDIS_SENTINELS", "redis://h:1"),
            ("REDIS_SENTINEL_MASTER", "m"),
            ("CACHE_WAIT_REPLICAS", "1"),
        ])
        .unwrap();
        assert_eq!(config.wait_replicas, 1);
        let error = from(&[
            ("REDIS_URL", "redis://h:1,redis://h:2"),
            ("CACHE_WAIT_REPLICAS", "1"),
        ])
        .unwrap_err();
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    variable: "CACHE_WAIT_REPLICAS",
                    ..
                }
            ),
            "{error}"
        );
    }
}
