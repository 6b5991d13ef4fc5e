//! Passwords out of URLs, for every message, log line and stats answer
//! that names a Redis target.

/// Replaces the password of a URL (`redis://user:secret@host`) with `***`.
///
/// Everything between `://` and the last `@` is credentials, whether or not
/// the URL parses, so a password holding an unencoded `/`, `@` or `#` is
/// hidden too.
///
/// ```
/// assert_eq!(
///     cache_core::redact_url("redis://app:s3cret@10.0.0.1:6379/0"),
///     "redis://app:***@10.0.0.1:6379/0"
/// );
/// assert_eq!(
///     cache_core::redact_url("redis://app:pa/ss@10.0.0.1:6379"),
///     "redis://app:***@10.0.0.1:6379"
/// );
/// assert_eq!(cache_core::redact_url("redis://127.0.0.1"), "redis://127.0.0.1");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let host = &rest[at + 1..];
            let user = match userinfo.split_once(':') {
                Some((user, _)) if !user.contains('/') => format!("{user}:***"),
                _ => "***".to_owned(),
            };
            format!("{scheme}://{user}@{host}")
        }
        None => url.to_owned(),
    }
}

/// Redacts every URL-looking word in a free text (error messages).
pub(crate) fn redact_text(text: &str) -> String {
    if !text.contains("://") {
        return text.to_owned();
    }
    text.split(' ')
        .map(|word| {
            if word.contains("://") {
                redact_url(word)
            } else {
                word.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
