//! Hash slots of Redis Cluster keys, and the small future helpers the
//! cluster routing runs its per-master commands with.

use std::task::{Context, Poll};

use crate::join::Boxed;

/// Hash slots of a Redis Cluster.
pub(crate) const SLOT_COUNT: usize = 16384;

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with.
const CRC16: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// The hash slot of `key`: of the part between the first `{` and the next
/// `}` when that part is not empty (a hash tag), else of the whole key.
pub(crate) fn slot_of(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let crc = hashed.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16[usize::from((crc >> 8) as u8 ^ b)]
    });
    crc % SLOT_COUNT as u16
}

/// Polls every future together until one's output passes `keep`; `None`
/// when none does.
pub(crate) async fn first_ok<T, U>(
    mut pending: Vec<Boxed<'_, T>>,
    mut keep: impl FnMut(T) -> Option<U>,
) -> Option<U> {
    std::future::poll_fn(|cx: &mut Context<'_>| {
        let mut i = 0;
        while i < pending.len() {
            match pending[i].as_mut().poll(cx) {
                Poll::Ready(output) => {
                    drop(pending.swap_remove(i));
                    if let Some(found) = keep(output) {
                        return Poll::Ready(Some(found));
                    }
                }
                Poll::Pending => i += 1,
            }
        }
        if pending.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::slot_of;

    #[test]
    fn slots_are_redis_cluster_slots() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        assert_eq!(slot_of(b"123456789"), 12739);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_ne!(slot_of(b"foo{}{bar}"), slot_of(b"bar"));
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
    }
}
