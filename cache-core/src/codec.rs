//! Value encoding: the [`Codec`] trait, the bincode 2 (default) and JSON
//! codecs, and the envelope every stored value carries.
//!
//! A stored value is `[0xC4, version, codec id, ...]`:
//! - version 1: the payload follows;
//! - version 2: the prefix generation the value was loaded under (8 bytes,
//!   little endian), then the payload;
//! - version 3: a flags byte, then the fields it announces (the prefix
//!   generation; when the value turns stale and when it is gone, for
//!   fail-safe; when a refresh-ahead is due; the tags and their
//!   generations), then the payload. Written only for values that need one
//!   of them, so a value of a function that uses none of these features is
//!   read exactly as before.
//!
//! Reading checks the header and the size limit; anything that does not
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
/// Envelope version with a flags byte and the fields it announces.
pub(crate) const EXTENDED_VERSION: u8 = 3;
/// Version of a lease marker that carries the value it replaced (a
/// refresh in progress): the marker's token, then that value's bytes.
pub(crate) const CARRYING_LEASE_VERSION: u8 = 4;

/// Flags of an [`EXTENDED_VERSION`] value.
const F_GENERATION: u8 = 1;
const F_TIMES: u8 = 2;
const F_THROTTLED: u8 = 4;
const F_REFRESH: u8 = 8;
const F_TAGS: u8 = 16;
const F_KNOWN: u8 = F_GENERATION | F_TIMES | F_THROTTLED | F_REFRESH | F_TAGS;

/// What a value carries besides its payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Meta<'a> {
    /// The prefix generation it was loaded under.
    pub(crate) generation: Option<u64>,
    /// When it turns stale and when it is gone (fail-safe), in
    /// milliseconds since the Unix epoch.
    pub(crate) times: Option<Times>,
    /// When a read should start a refresh-ahead (ms since the Unix epoch).
    pub(crate) refresh_at: Option<u64>,
    /// A stale value put back after a failed load: served as stale until
    /// `times.fresh_until` (the end of the throttle) without loading.
    pub(crate) throttled: bool,
    /// The tags it was loaded under, each with its generation then.
    pub(crate) tags: &'a [(String, u64)],
}

/// A value's logical expiry: fresh until `fresh_until`, then stale (kept
/// for fail-safe) until `expires_at`, its physical expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Times {
    pub(crate) fresh_until: u64,
    pub(crate) expires_at: u64,
}

impl Meta<'_> {
    /// Whether the value needs the extended envelope.
    fn extended(&self) -> bool {
        self.times.is_some() || self.refresh_at.is_some() || self.throttled || !self.tags.is_empty()
    }
}

/// Encodes `value` unlabeled (the tests' shorthand).
#[cfg(test)]
pub(crate) fn encode<T: Serialize + ?Sized>(kind: CodecKind, value: &T) -> Result<Vec<u8>, String> {
    encode_with(kind, value, &Meta::default())
}

/// Encodes `value` with what it carries: the versions 1 and 2 when it
/// carries no more than a generation, else version 3.
pub(crate) fn encode_with<T: Serialize + ?Sized>(
    kind: CodecKind,
    value: &T,
    meta: &Meta<'_>,
) -> Result<Vec<u8>, String> {
    envelope(kind, meta, |out| encode_payload(kind, value, out))
}

/// The envelope for `meta`, then the payload `write` appends.
pub(crate) fn envelope(
    kind: CodecKind,
    meta: &Meta<'_>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(64);
    out.push(ENVELOPE_MAGIC);
    let codec_at = if meta.extended() {
        out.extend_from_slice(&[EXTENDED_VERSION, 0, 0]);
        let mut flags = 0;
        if let Some(generation) = meta.generation {
            flags |= F_GENERATION;
            out.extend_from_slice(&generation.to_le_bytes());
        }
        if let Some(times) = meta.times {
            flags |= F_TIMES;
            out.extend_from_slice(&times.fresh_until.to_le_bytes());
            out.extend_from_slice(&times.expires_at.to_le_bytes());
        }
        if meta.throttled {
            flags |= F_THROTTLED;
        }
        if let Some(at) = meta.refresh_at {
            flags |= F_REFRESH;
            out.extend_from_slice(&at.to_le_bytes());
        }
        if !meta.tags.is_empty() {
            flags |= F_TAGS;
            let count = u8::try_from(meta.tags.len()).map_err(|_| "more than 255 tags")?;
            out.push(count);
            for (tag, generation) in meta.tags {
                let len =
                    u8::try_from(tag.len()).map_err(|_| format!("tag over 255 bytes: {tag}"))?;
                out.push(len);
                out.extend_from_slice(tag.as_bytes());
                out.extend_from_slice(&generation.to_le_bytes());
            }
        }
        out[3] = flags;
        2
    } else {
        out.push(if meta.generation.is_some() {
            LABELED_VERSION
        } else {
            FORMAT_VERSION
        });
        out.push(0);
        if let Some(generation) = meta.generation {
            out.extend_from_slice(&generation.to_le_bytes());
        }
        2
    };
    out[codec_at] = codec_id(kind);
    write(&mut out)?;
    Ok(out)
}

/// Appends the encoding of `value` in `kind`'s format (no envelope).
pub(crate) fn encode_payload<T: Serialize + ?Sized>(
    kind: CodecKind,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    match kind {
        CodecKind::Bincode => Bincode::encode(value, out),
        CodecKind::Json => Json::encode(value, out),
    }
}

/// The codec id `kind` writes.
fn codec_id(kind: CodecKind) -> u8 {
    match kind {
        CodecKind::Bincode => Bincode::ID,
        CodecKind::Json => Json::ID,
    }
}

/// The parsed header of an [`EXTENDED_VERSION`] value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extended {
    pub(crate) generation: Option<u64>,
    pub(crate) times: Option<Times>,
    pub(crate) refresh_at: Option<u64>,
    pub(crate) throttled: bool,
    /// Where the tags start and end (empty: none).
    tags: (usize, usize),
    /// Where the payload starts.
    payload: usize,
    /// Where the refresh-ahead time is (0: none).
    refresh_field: usize,
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The header of an [`EXTENDED_VERSION`] value (`None`: not one, or malformed).
pub(crate) fn extended(bytes: &[u8]) -> Option<Extended> {
    if bytes.len() < HEADER_LEN + 1 || bytes[0] != ENVELOPE_MAGIC || bytes[1] != EXTENDED_VERSION {
        return None;
    }
    let flags = bytes[3];
    if flags & !F_KNOWN != 0 {
        return None;
    }
    let mut at = HEADER_LEN + 1;
    let mut field = |present: bool| -> Option<Option<(u64, usize)>> {
        if !present {
            return Some(None);
        }
        let v = u64_at(bytes, at)?;
        at += 8;
        Some(Some((v, at - 8)))
    };
    let generation = field(flags & F_GENERATION != 0)?.map(|(v, _)| v);
    let times = match flags & F_TIMES != 0 {
        true => {
            let fresh_until = field(true)??.0;
            let expires_at = field(true)??.0;
            Some(Times {
                fresh_until,
                expires_at,
            })
        }
        false => None,
    };
    let refresh = field(flags & F_REFRESH != 0)?;
    let tags_start = at;
    if flags & F_TAGS != 0 {
        let count = *bytes.get(at)?;
        at += 1;
        for _ in 0..count {
            let len = usize::from(*bytes.get(at)?);
            at += 1 + len + 8;
        }
        if at > bytes.len() {
            return None;
        }
    }
    Some(Extended {
        generation,
        times,
        refresh_at: refresh.map(|(v, _)| v),
        throttled: flags & F_THROTTLED != 0,
        tags: (tags_start, at),
        payload: at,
        refresh_field: refresh.map_or(0, |(_, at)| at),
    })
}

impl Extended {
    /// The tags the value carries, each with the generation it was loaded
    /// under (`bytes`: the value's).
    pub(crate) fn tags<'b>(&self, bytes: &'b [u8]) -> impl Iterator<Item = (&'b str, u64)> + 'b {
        let (start, end) = self.tags;
        let mut at = start + 1;
        let count = if end > start {
            usize::from(bytes[start])
        } else {
            0
        };
        (0..count).filter_map(move |_| {
            let len = usize::from(*bytes.get(at)?);
            let tag = std::str::from_utf8(bytes.get(at + 1..at + 1 + len)?).ok();
            let generation = u64_at(bytes, at + 1 + len)?;
            at += 1 + len + 8;
            Some((tag?, generation))
        })
    }

    /// Whether the value carries tags.
    pub(crate) fn has_tags(&self) -> bool {
        self.tags.1 > self.tags.0
    }
}

/// `bytes` (a value with a logical expiry) put back after a failed load:
/// served as stale, without loading, until `until`.
pub(crate) fn throttled(bytes: &[u8], until: u64) -> Option<Vec<u8>> {
    let header = extended(bytes)?;
    header.times?;
    let mut out = bytes.to_vec();
    out[3] |= F_THROTTLED;
    // `fresh_until` is the first time field, right after the generation.
    let at = HEADER_LEN + 1 + if header.generation.is_some() { 8 } else { 0 };
    out[at..at + 8].copy_from_slice(&until.to_le_bytes());
    Some(out)
}

/// `bytes` with its refresh-ahead moved to `at` (after a failed refresh).
pub(crate) fn with_refresh_at(bytes: &[u8], at: u64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if let Some(header) = extended(bytes)
        && header.refresh_field != 0
    {
        out[header.refresh_field..header.refresh_field + 8].copy_from_slice(&at.to_le_bytes());
    }
    out
}

/// The generation label of a stored value (`None`: unlabeled or not ours).
#[inline]
pub(crate) fn generation_of(bytes: &[u8]) -> Option<u64> {
    if bytes.len() >= HEADER_LEN + 8 && bytes[0] == ENVELOPE_MAGIC {
        match bytes[1] {
            LABELED_VERSION => Some(u64::from_le_bytes(
                bytes[HEADER_LEN..HEADER_LEN + 8].try_into().ok()?,
            )),
            EXTENDED_VERSION => extended(bytes)?.generation,
            _ => None,
        }
    } else {
        None
    }
}

/// Whether `bytes` is a value of the extended envelope (its times and
/// tags must be looked at before it is served).
#[inline]
pub(crate) fn is_extended(bytes: &[u8]) -> bool {
    bytes.len() > HEADER_LEN && bytes[0] == ENVELOPE_MAGIC && bytes[1] == EXTENDED_VERSION
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
#[inline]
pub(crate) fn label(bytes: &[u8], current: Option<u64>) -> Label {
    match (current, generation_of(bytes)) {
        (None, _) => Label::Current,
        (Some(g), Some(l)) if g == l => Label::Current,
        (Some(_), Some(_)) => Label::Other,
        (Some(_), None) => Label::Unlabeled,
    }
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], max_len: usize) -> Result<T, DecodeError> {
    if bytes.len() > max_len.saturating_add(HEADER_LEN) && !is_extended(bytes) {
        return Err(DecodeError::TooLarge);
    }
    if bytes.len() < HEADER_LEN || bytes[0] != ENVELOPE_MAGIC {
        return Err(DecodeError::Foreign);
    }
    let payload = match bytes[1] {
        FORMAT_VERSION => &bytes[HEADER_LEN..],
        LABELED_VERSION if bytes.len() >= HEADER_LEN + 8 => &bytes[HEADER_LEN + 8..],
        EXTENDED_VERSION => match extended(bytes) {
            Some(header) => &bytes[header.payload..],
            None => return Err(DecodeError::Foreign),
        },
        _ => return Err(DecodeError::Foreign),
    };
    if payload.len() > max_len {
        return Err(DecodeError::TooLarge);
    }
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

/// A lease marker that carries `value`, the bytes it replaces while a load
/// refreshes them: other readers find the value inside the lease (served
/// while it is fresh, the fail-safe reserve once it is stale), and an
/// invalidation deletes both at once.
pub(crate) fn carrying_lease_marker(token: u64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 8 + value.len());
    out.extend_from_slice(&[ENVELOPE_MAGIC, CARRYING_LEASE_VERSION, LEASE_CODEC_ID]);
    out.extend_from_slice(&token.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// The value a lease marker carries, if it carries one.
pub(crate) fn carried(bytes: &[u8]) -> Option<&[u8]> {
    (is_lease(bytes) && bytes[1] == CARRYING_LEASE_VERSION && bytes.len() > HEADER_LEN + 8)
        .then(|| &bytes[HEADER_LEN + 8..])
}

/// Whether `bytes` start with this crate's envelope (any version).
pub(crate) fn is_envelope(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && bytes[0] == ENVELOPE_MAGIC
}

/// Whether `bytes` is a lease marker (some loader is filling this key).
#[inline]
pub(crate) fn is_lease(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN + 8
        && bytes[0] == ENVELOPE_MAGIC
        && bytes[2] == LEASE_CODEC_ID
        && ((bytes[1] == FORMAT_VERSION && bytes.len() == HEADER_LEN + 8)
            || bytes[1] == CARRYING_LEASE_VERSION)
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
