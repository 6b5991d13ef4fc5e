//! Key construction: escaping of user values, stable hashing of arguments and
//! Redis-style glob matching (used by the memory backend).
//!
//! A stored key is `{namespace}:{prefix}:{rest}`. Values substituted into a
//! key template are percent-escaped (`*` → `%2A`, `:` → `%3A`, ...), so user
//! data can never add a glob character or a segment separator to a key: an
//! argument holding `"*"` names exactly one key, never a pattern. Braces are
//! escaped too: on Redis Cluster a `{tag}` in a key picks its slot, and that
//! choice belongs to the code, not to its callers' data.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// Characters that are percent-escaped in substituted values.
fn needs_escape(c: char) -> bool {
    matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | ':' | '\\' | '%') || c.is_ascii_control()
}

/// Escapes a value for use inside a key: `* ? [ ] { } : \ %` and ASCII control
/// characters become `%XX`. The mapping is injective, so two different values
/// never share a key.
///
/// ```
/// use cache_core::keys::escape;
/// assert_eq!(escape("42"), "42");
/// assert_eq!(escape("a*b:c"), "a%2Ab%3Ac");
/// assert_eq!(escape("100%"), "100%25");
/// ```
pub fn escape(value: &str) -> Cow<'_, str> {
    if !value.chars().any(needs_escape) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    push_escaped_str(&mut out, value);
    Cow::Owned(out)
}

pub(crate) fn push_escaped_str(out: &mut String, value: &str) {
    // Every escaped character is ASCII, so scan bytes and copy the runs in
    // between whole (a byte >= 0x80 is never escaped, and an ASCII byte is
    // always a char boundary).
    let mut run = 0;
    for (i, byte) in value.bytes().enumerate() {
        if byte.is_ascii() && needs_escape(char::from(byte)) {
            out.push_str(&value[run..i]);
            let _ = write!(out, "%{byte:02X}");
            run = i + 1;
        }
    }
    out.push_str(&value[run..]);
}

/// Appends the `Display` form of `value` to `buf`, escaped.
pub(crate) fn push_escaped_display<T: fmt::Display + ?Sized>(buf: &mut String, value: &T) {
    // Format straight into the key, then escape only if needed (rare: ids
    // and names seldom hold `* ? [ ] { } : \ %` or control characters).
    let start = buf.len();
    let _ = write!(buf, "{value}");
    if buf.as_bytes()[start..]
        .iter()
        .any(|b| b.is_ascii() && needs_escape(char::from(*b)))
    {
        let raw = buf.split_off(start);
        push_escaped_str(buf, &raw);
    }
}

/// A stable 128-bit hash of `value`'s serde serialization, as 32 lowercase hex
/// digits: XXH3-128 over the bincode 2 `standard()` encoding. It is the same
/// on every machine, process and Rust version (never `std::hash`), as long as
/// the value serializes the same way (a `HashMap` argument does not: its
/// iteration order is random; use a `BTreeMap`).
///
/// ```
/// let a = cache_core::keys::stable_hash(&("alice", 7u32));
/// let b = cache_core::keys::stable_hash(&("alice", 7u32));
/// assert_eq!(a, b);
/// assert_eq!(a.len(), 32);
/// assert_ne!(a, cache_core::keys::stable_hash(&("alice", 8u32)));
/// ```
pub fn stable_hash<T: serde::Serialize + ?Sized>(value: &T) -> String {
    let bytes =
        bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap_or_else(|e| {
            // Serialization of an argument can only fail for types whose
            // Serialize impl errors on purpose; fall back to the message so the
            // call still gets a (distinct, stable) key instead of a panic.
            format!("unserializable:{e}").into_bytes()
        });
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes))
}

/// Whether `text` matches the Redis glob `pattern`, with Redis's
/// `stringmatchlen` semantics: `*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`.
/// The memory backend's `delete_pattern` uses it, so a pattern selects the
/// same keys in memory as on Redis; custom backends can use it too.
///
/// ```
/// use cache_core::keys::glob_match;
/// assert!(glob_match(b"cache:customer:*", b"cache:customer:42"));
/// assert!(!glob_match(b"cache:customer:*", b"cache:customers:42"));
/// assert!(glob_match(b"churn:[0-4]", b"churn:3"));
/// ```
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, t));
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((true, next)) = match_class(pattern, p, text[t]) {
                        p = next;
                        t += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

/// Matches `[...]` at `pattern[start]` against `c`; returns (matched, index after `]`).
fn match_class(pattern: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    loop {
        let b = *pattern.get(i)?;
        if b == b']' {
            break;
        }
        if b == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = (b.min(pattern[i + 2]), b.max(pattern[i + 2]));
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= b == c;
            i += 1;
        }
    }
    Some((matched != negate, i + 1))
}

/// Escapes glob characters so `s` matches only itself in a pattern.
pub(crate) fn glob_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_are_escaped_so_user_data_cannot_pick_a_cluster_slot() {
        // On Redis Cluster only the part between the first `{` and `}` of a
        // key is hashed: unescaped, a value holding `{tenant}` would choose
        // the slot of every key it appears in.
        assert_eq!(escape("{tenant}a"), "%7Btenant%7Da");
        let mut key = String::from("ns:p:");
        push_escaped_display(&mut key, "{t}");
        assert_eq!(key, "ns:p:%7Bt%7D");
        assert!(!escape("}{").contains(['{', '}']));
    }

    #[test]
    fn glob_matches_like_redis() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m("a:*", "a:1"));
        assert!(m("a:*", "a:"));
        assert!(!m("a:*", "b:1"));
        assert!(m("*", ""));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("a[bc]d", "acd"));
        assert!(!m("a[^bc]d", "acd"));
        assert!(m("a[a-z]d", "aqd"));
        assert!(m("a\\*", "a*"));
        assert!(!m("a\\*", "ab"));
        assert!(m("*:x:*", "ns:x:1"));
        assert!(m("ns:customer:*", "ns:customer:1%2A"));
        assert!(!m("ns:customer:*", "ns:customers:1"));
    }

    #[test]
    fn display_values_are_escaped_after_what_the_buffer_holds() {
        let mut key = String::from("ns:p:");
        push_escaped_display(&mut key, &42u64);
        push_escaped_display(&mut key, "é*ü:\n%");
        push_escaped_display(&mut key, &'\u{7f}');
        assert_eq!(key, "ns:p:42é%2Aü%3A%0A%25%7F");
    }

    #[test]
    fn escaping_is_injective_and_glob_free() {
        let values = ["*", "%2A", "a:b", "a%3Ab", "[x]", "?", "\\", "plain"];
        let escaped: Vec<_> = values.iter().map(|v| escape(v).into_owned()).collect();
        for (i, a) in escaped.iter().enumerate() {
            assert!(!a.contains(['*', '?', '[', ']', ':', '\\']), "{a}");
            for b in &escaped[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
