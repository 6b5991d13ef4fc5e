//! Key building for generated code: the default key's argument hash, the
//! type segment of generic functions, and placeholders appended without
//! `core::fmt`.

use serde::Serialize;

/// Autoref-specialization probe hashing one argument of a default key:
/// `(&KeyProbe(&arg)).key_hash()` is the argument's stable hash when it is
/// `Serialize` ([`KeyViaSerialize`]), else a [`NotSerialize`] marker
/// ([`KeyViaMissing`]) that the generated code rejects with an error naming
/// the argument.
pub struct KeyProbe<'a, T: ?Sized>(pub &'a T);

/// Chosen for `Serialize` arguments.
pub trait KeyViaSerialize {
    /// The argument's stable hash.
    fn key_hash(&self) -> String;
}

impl<T: Serialize + ?Sized> KeyViaSerialize for KeyProbe<'_, T> {
    fn key_hash(&self) -> String {
        crate::keys::stable_hash(self.0)
    }
}

/// What a non-`Serialize` argument hashes to: nothing usable.
pub struct NotSerialize;

/// A probed hash as a `String`. [`NotSerialize`] implements it too, as the
/// empty string, so that a `_cache_key` companion adds no error of its own
/// to the one its function reports (and never compiles into a program).
pub trait KeyHash {
    /// The hash.
    fn into_key_hash(self) -> String;
}

impl KeyHash for String {
    fn into_key_hash(self) -> String {
        self
    }
}

impl KeyHash for NotSerialize {
    fn into_key_hash(self) -> String {
        String::new()
    }
}

/// The fallback for arguments that are not `Serialize`.
pub trait KeyViaMissing {
    /// The marker.
    fn key_hash(&self) -> NotSerialize;
}

impl<T: ?Sized> KeyViaMissing for &KeyProbe<'_, T> {
    fn key_hash(&self) -> NotSerialize {
        NotSerialize
    }
}

/// The default key: a stable 128-bit hash of the arguments (32 hex digits).
pub fn hash_args<T: Serialize + ?Sized>(args: &T) -> String {
    crate::keys::stable_hash(args)
}

/// Appends the key segment of a generic function's instantiation: 16 hex
/// digits of a hash of its type parameters' [`type_name`](core::any::type_name)s,
/// then `:`. Stable for a given build (a compiler may name types
/// differently, which only costs misses after an upgrade).
pub fn push_type_key(buf: &mut String, type_names: &[&str]) {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for name in type_names {
        hasher.update(name.as_bytes());
        // A separator that no type name contains.
        hasher.update(b";");
    }
    let hash = hasher.digest();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        buf.push(char::from(HEX[((hash >> (shift * 4)) & 0xf) as usize]));
    }
    buf.push(':');
}

/// A placeholder value the generated code appends without `core::fmt`: an
/// integer's digits, or a string escaped like its `Display` form. The key is
/// byte for byte what [`push_escaped`](super::push_escaped) writes; only the cost differs (an
/// integer through `core::fmt` plus the escape scan is a visible part of a
/// memory hit).
pub enum FastPart<'a> {
    /// An unsigned integer.
    Unsigned(u64),
    /// A signed integer.
    Signed(i64),
    /// A string (escaped when appended).
    Str(&'a str),
}

impl FastPart<'_> {
    /// Appends this part to `buf`.
    pub fn push_to(self, buf: &mut String) {
        match self {
            // Digits and `-` never need escaping.
            FastPart::Unsigned(n) => buf.push_str(itoa::Buffer::new().format(n)),
            FastPart::Signed(n) => buf.push_str(itoa::Buffer::new().format(n)),
            FastPart::Str(s) => crate::keys::push_escaped_str(buf, s),
        }
    }
}

/// Autoref-specialization probe for [`FastPart`]: `(&PartProbe(&value)).fast_part()`
/// is `Some` for the integer and string types below ([`ViaFastPart`]) and
/// `None` for every other type ([`ViaDisplay`]), which then goes through
/// [`push_escaped`](super::push_escaped) (and its `Display` bound, so a non-`Display` placeholder
/// is still reported against the placeholder).
pub struct PartProbe<'a, T: ?Sized>(pub &'a T);

/// Chosen for integers and strings.
pub trait ViaFastPart<'a> {
    /// The value as a [`FastPart`].
    fn fast_part(&self) -> Option<FastPart<'a>>;
}

/// The fallback: format through `Display`.
pub trait ViaDisplay<'a> {
    /// `None`: use [`push_escaped`](super::push_escaped).
    fn fast_part(&self) -> Option<FastPart<'a>>;
}

impl<'a, T: ?Sized> ViaDisplay<'a> for &PartProbe<'a, T> {
    fn fast_part(&self) -> Option<FastPart<'a>> {
        None
    }
}

macro_rules! fast_parts {
    ($variant:ident: $($t:ty),*) => {$(
        impl<'a> ViaFastPart<'a> for PartProbe<'a, $t> {
            fn fast_part(&self) -> Option<FastPart<'a>> {
                // `try_from` is lossless for every listed type on 64-bit
                // targets; anything else falls back to `Display`.
                Some(FastPart::$variant((*self.0).try_into().ok()?))
            }
        }
        impl<'a> ViaFastPart<'a> for PartProbe<'a, &$t> {
            fn fast_part(&self) -> Option<FastPart<'a>> {
                Some(FastPart::$variant((**self.0).try_into().ok()?))
            }
        }
    )*};
}
fast_parts!(Unsigned: u8, u16, u32, u64, usize);
fast_parts!(Signed: i8, i16, i32, i64, isize);

macro_rules! fast_strs {
    ($($t:ty),*) => {$(
        impl<'a> ViaFastPart<'a> for PartProbe<'a, $t> {
            fn fast_part(&self) -> Option<FastPart<'a>> {
                Some(FastPart::Str(self.0))
            }
        }
        impl<'a> ViaFastPart<'a> for PartProbe<'a, &$t> {
            fn fast_part(&self) -> Option<FastPart<'a>> {
                Some(FastPart::Str(self.0))
            }
        }
    )*};
}
fast_strs!(str, String);
