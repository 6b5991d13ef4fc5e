//! Values in and out of bytes: the configured codec, the size limit, and
//! the counting of what does not encode or decode.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Cache;
use crate::codec::{DecodeError, Meta, decode, encode_with};
use crate::error::CacheError;
use crate::stats::{Event, PrefixEntry};

impl Cache {
    /// Encodes `value` labeled with `generation`, checking its size
    /// (an oversized value is counted and refused).
    pub(crate) fn encode<T: Serialize + ?Sized>(
        &self,
        entry: &PrefixEntry,
        key: &str,
        value: &T,
        generation: Option<u64>,
    ) -> Result<Vec<u8>, CacheError> {
        let meta = Meta {
            generation,
            ..Meta::default()
        };
        self.encode_meta(entry, key, value, &meta)
    }

    /// [`encode`](Self::encode) with everything the value carries (its
    /// logical expiry, tags).
    pub(crate) fn encode_meta<T: Serialize + ?Sized>(
        &self,
        entry: &PrefixEntry,
        key: &str,
        value: &T,
        meta: &Meta<'_>,
    ) -> Result<Vec<u8>, CacheError> {
        let config = &self.inner.config;
        let bytes =
            encode_with(config.codec, value, meta).map_err(|message| CacheError::Encode {
                key: key.to_owned(),
                message,
            })?;
        if bytes.len() > config.max_value_bytes {
            self.inner.stats.record(entry, Event::Oversized);
            tracing::warn!(
                key,
                size = bytes.len(),
                limit = config.max_value_bytes,
                "value over max_value_bytes not stored"
            );
            return Err(CacheError::TooLarge {
                key: key.to_owned(),
                size: bytes.len(),
                limit: config.max_value_bytes,
            });
        }
        Ok(bytes)
    }

    /// Decodes, counting a failure as a decode failure (the caller treats it as a miss).
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        entry: &PrefixEntry,
        key: &str,
        bytes: &[u8],
    ) -> Option<T> {
        match decode(bytes, self.inner.config.max_value_bytes) {
            Ok(v) => Some(v),
            Err(err) => {
                self.inner.stats.record(entry, Event::DecodeFailure);
                let reason = match err {
                    DecodeError::Foreign => {
                        "not written by cache-core (or by a newer format)".to_owned()
                    }
                    DecodeError::TooLarge => "over max_value_bytes".to_owned(),
                    DecodeError::Payload(m) => m,
                };
                tracing::debug!(key, %reason, "stored value did not decode; treating as a miss");
                None
            }
        }
    }
}
