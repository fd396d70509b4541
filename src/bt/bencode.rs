//! The two bencode writers both the torrent creator and the tracker need.

/// A byte string: `<len>:<bytes>`.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

/// An integer: `i<n>e`.
pub fn put_int(out: &mut Vec<u8>, i: u64) {
    out.push(b'i');
    out.extend_from_slice(i.to_string().as_bytes());
    out.push(b'e');
}

/// Deepest nesting `value_end` follows; a torrent needs four or five.
const MAX_DEPTH: usize = 32;

/// Where the bencoded value starting at `at` ends (one past its last
/// byte), or `None` if it is not one.
pub fn value_end(b: &[u8], at: usize) -> Option<usize> {
    value_end_at(b, at, 0)
}

fn value_end_at(b: &[u8], at: usize, depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    match *b.get(at)? {
        b'i' => {
            let end = at + 1 + b.get(at + 1..)?.iter().position(|&c| c == b'e')?;
            Some(end + 1)
        }
        b'l' | b'd' => {
            let mut i = at + 1;
            while *b.get(i)? != b'e' {
                i = value_end_at(b, i, depth + 1)?;
            }
            Some(i + 1)
        }
        b'0'..=b'9' => {
            let colon = at + b.get(at..)?.iter().position(|&c| c == b':')?;
            let len: usize = std::str::from_utf8(&b[at..colon]).ok()?.parse().ok()?;
            let end = colon.checked_add(1)?.checked_add(len)?;
            (end <= b.len()).then_some(end)
        }
        _ => None,
    }
}

/// The raw bytes of key `key` in the top-level dictionary `b`.
pub fn dict_value<'a>(b: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    if b.first() != Some(&b'd') {
        return None;
    }
    let mut i = 1;
    while *b.get(i)? != b'e' {
        let key_end = value_end(b, i)?;
        let colon = i + b[i..key_end].iter().position(|&c| c == b':')?;
        let this = &b[colon + 1..key_end];
        let val_end = value_end(b, key_end)?;
        if this == key {
            return Some(&b[key_end..val_end]);
        }
        i = val_end;
    }
    None
}

/// A torrent with the same info dictionary (so the same info hash) and
/// `announce` as its only tracker: whatever trackers it named are gone.
pub fn with_only_tracker(torrent: &[u8], announce: &str) -> Option<Vec<u8>> {
    let info = dict_value(torrent, b"info")?;
    let mut out = b"d".to_vec();
    put_bytes(&mut out, b"announce");
    put_bytes(&mut out, announce.as_bytes());
    put_bytes(&mut out, b"info");
    out.extend_from_slice(info);
    out.push(b'e');
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torrent_keeps_its_info_and_loses_its_trackers() {
        let t = b"d8:announce22:http://10.9.9.9/evil/a13:announce-listll13:http://x/eviledee4:infod6:lengthi5e4:name3:abc12:piece lengthi16384e6:pieces0:ee";
        let info = dict_value(t, b"info").expect("info");
        assert_eq!(
            info,
            b"d6:lengthi5e4:name3:abc12:piece lengthi16384e6:pieces0:e"
        );
        let out = with_only_tracker(t, "http://server:50021/announce").expect("rewritten");
        assert_eq!(
            out,
            b"d8:announce28:http://server:50021/announce4:infod6:lengthi5e4:name3:abc12:piece lengthi16384e6:pieces0:ee".to_vec()
        );
        assert!(dict_value(b"d3:bad", b"info").is_none());
        assert!(dict_value(b"d4:info99999:x", b"info").is_none());
        let deep = "l".repeat(100) + &"e".repeat(100);
        assert!(value_end(deep.as_bytes(), 0).is_none());
    }
}
