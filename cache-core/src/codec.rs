//! Value encoding: the [`Codec`] trait, the bincode 2 (default) and JSON
//! codecs, and the envelope every stored value carries.
//!
//! A stored value is `[0xC4, FORMAT_VERSION, codec id, payload...]`. Reading
//! checks all three header bytes and the size limit; anything that does not
//! decode (foreign bytes written by another program, a value of an older
//! shape, corruption) is treated as a miss, counted in
//! [`stats`](crate::Cache::stats) as a decode failure, and overwritten by the
//! next store. It never panics and never reaches the caller as an error.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// First byte of every value this crate writes.
pub const ENVELOPE_MAGIC: u8 = 0xC4;
/// Version of the envelope layout.
pub const FORMAT_VERSION: u8 = 1;
/// Codec id reserved for lease markers (a loader's claim on a missing key).
pub(crate) const LEASE_CODEC_ID: u8 = 0;
const HEADER_LEN: usize = 3;

/// A serialization format for cached values.
///
/// Implemented by [`Bincode`] (compact, fast, the default) and [`Json`]
/// (readable by other languages, and needed for types using serde attributes
/// that require a self-describing format, such as `#[serde(flatten)]` or
/// untagged enums).
pub trait Codec {
    /// Identifier stored in the envelope; must be unique and non-zero.
    const ID: u8;
    /// Human-readable name.
    const NAME: &'static str;
    /// Appends the encoding of `value` to `out`.
    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), String>;
    /// Decodes a value from exactly `bytes`.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String>;
}

/// bincode 2 in serde mode with the `standard()` configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

/// Hard ceiling on what bincode may allocate while decoding.
const BINCODE_LIMIT: usize = 512 * 1024 * 1024;

impl Codec for Bincode {
    const ID: u8 = 1;
    const NAME: &'static str = "bincode";
    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        let config = bincode::config::standard().with_limit::<BINCODE_LIMIT>();
        match bincode::serde::decode_from_slice(bytes, config) {
            Ok((value, read)) if read == bytes.len() => Ok(value),
            Ok((_, read)) => Err(format!("{} trailing bytes", bytes.len() - read)),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// JSON through serde_json.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    const ID: u8 = 2;
    const NAME: &'static str = "json";
    fn encode<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), String> {
        serde_json::to_writer(out, value).map_err(|e| e.to_string())
    }
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

/// The codec a [`Cache`](crate::Cache) writes with (it reads both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CodecKind {
    /// [`Bincode`] (default).
    #[default]
    Bincode,
    /// [`Json`].
    Json,
}

/// Why a stored value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Not written by this crate (no envelope) or by a newer format.
    Foreign,
    /// Over the size limit.
    TooLarge,
    /// The payload did not decode as the requested type.
    Payload(String),
}

/// Envelope version of values labeled with their prefix generation: the
/// header is followed by the generation (8 bytes, little endian).
pub(crate) const LABELED_VERSION: u8 = 2;

/// Encodes `value` unlabeled (the tests' shorthand).
#[cfg(test)]
pub(crate) fn encode<T: Serialize + ?Sized>(kind: CodecKind, value: &T) -> Result<Vec<u8>, String> {
    encode_labeled(kind, value, None)
}

/// Encodes `value`, labeled with the prefix generation it was loaded under.
pub(crate) fn encode_labeled<T: Serialize + ?Sized>(
    kind: CodecKind,
    value: &T,
    generation: Option<u64>,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64);
    out.push(ENVELOPE_MAGIC);
    out.push(if generation.is_some() {
        LABELED_VERSION
    } else {
        FORMAT_VERSION
    });
    let codec_at = out.len();
    out.push(0);
    if let Some(generation) = generation {
        out.extend_from_slice(&generation.to_le_bytes());
    }
    match kind {
        CodecKind::Bincode => {
            out[codec_at] = Bincode::ID;
            Bincode::encode(value, &mut out)?;
        }
        CodecKind::Json => {
            out[codec_at] = Json::ID;
            Json::encode(value, &mut out)?;
        }
    }
    Ok(out)
}

/// The generation label of a stored value (`None`: unlabeled or not ours).
pub(crate) fn generation_of(bytes: &[u8]) -> Option<u64> {
    if bytes.len() >= HEADER_LEN + 8 && bytes[0] == ENVELOPE_MAGIC && bytes[1] == LABELED_VERSION {
        Some(u64::from_le_bytes(
            bytes[HEADER_LEN..HEADER_LEN + 8].try_into().ok()?,
        ))
    } else {
        None
    }
}

/// How a stored value stands against the prefix generation `current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Label {
    /// Generations are off, or the value carries the current one: read it.
    Current,
    /// Labeled with another generation: invalidated, a miss (not a decode
    /// failure).
    Other,
    /// No generation label although generations are on: decode it to tell
    /// a value written without generations (a miss) from foreign or corrupt
    /// bytes (a counted decode failure), then treat it as a miss.
    Unlabeled,
}

/// See [`Label`].
pub(crate) fn label(bytes: &[u8], current: Option<u64>) -> Label {
    match (current, generation_of(bytes)) {
        (None, _) => Label::Current,
        (Some(g), Some(l)) if g == l => Label::Current,
        (Some(_), Some(_)) => Label::Other,
        (Some(_), None) => Label::Unlabeled,
    }
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, DecodeError> {
    if bytes.len() > max_len.saturating_add(HEADER_LEN) {
        return Err(DecodeError::TooLarge);
    }
    if bytes.len() < HEADER_LEN || bytes[0] != ENVELOPE_MAGIC {
        return Err(DecodeError::Foreign);
    }
    let payload = match bytes[1] {
        FORMAT_VERSION => &bytes[HEADER_LEN..],
        LABELED_VERSION if bytes.len() >= HEADER_LEN + 8 => &bytes[HEADER_LEN + 8..],
        _ => return Err(DecodeError::Foreign),
    };
    match bytes[2] {
        Bincode::ID => Bincode::decode(payload).map_err(DecodeError::Payload),
        Json::ID => Json::decode(payload).map_err(DecodeError::Payload),
        _ => Err(DecodeError::Foreign),
    }
}

/// A lease marker: the envelope header with codec id 0, then the token.
pub(crate) fn lease_marker(token: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 8);
    out.extend_from_slice(&[ENVELOPE_MAGIC, FORMAT_VERSION, LEASE_CODEC_ID]);
    out.extend_from_slice(&token.to_be_bytes());
    out
}

/// Whether `bytes` start with this crate's envelope (any version).
pub(crate) fn is_envelope(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && bytes[0] == ENVELOPE_MAGIC
}

/// Whether `bytes` is a lease marker (some loader is filling this key).
pub(crate) fn is_lease(bytes: &[u8]) -> bool {
    bytes.len() == HEADER_LEN + 8
        && bytes[0] == ENVELOPE_MAGIC
        && bytes[1] == FORMAT_VERSION
        && bytes[2] == LEASE_CODEC_ID
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Customer {
        id: u64,
        name: String,
    }

    #[test]
    fn round_trips_in_both_codecs() {
        let c = Customer {
            id: 7,
            name: "Ada".into(),
        };
        for kind in [CodecKind::Bincode, CodecKind::Json] {
            let bytes = encode(kind, &c).unwrap();
            assert_eq!(decode::<Customer>(&bytes, 1024).unwrap(), c);
        }
    }

    #[test]
    fn foreign_corrupt_and_oversized_bytes_are_errors_not_panics() {
        assert_eq!(
            decode::<Customer>(b"{\"id\":1}", 1024),
            Err(DecodeError::Foreign)
        );
        assert_eq!(decode::<Customer>(b"", 1024), Err(DecodeError::Foreign));
        let mut bytes = encode(
            CodecKind::Bincode,
            &Customer {
                id: 1,
                name: "x".into(),
            },
        )
        .unwrap();
        bytes.truncate(bytes.len() - 1);
        assert!(matches!(
            decode::<Customer>(&bytes, 1024),
            Err(DecodeError::Payload(_))
        ));
        let big = encode(CodecKind::Bincode, &vec![0u8; 2000]).unwrap();
        assert_eq!(decode::<Vec<u8>>(&big, 1024), Err(DecodeError::TooLarge));
        // A length prefix claiming a huge vector must not allocate it.
        let mut evil = vec![ENVELOPE_MAGIC, FORMAT_VERSION, Bincode::ID, 0xFD];
        evil.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode::<Vec<u64>>(&evil, 1024).is_err());
        assert!(decode::<Customer>(&lease_marker(9), 1024).is_err());
    }
}
