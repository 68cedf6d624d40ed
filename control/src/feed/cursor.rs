//! The `after` cursor of snapshot pages (control/FEED.md, "Snapshots"): the sync only sends
//! back the `next` it was given, so the text is the service's own, opaque to everyone
//! else. It is base64url without padding of `1|<epoch>|<view>|<table>|<last id>`: a format
//! number, the snapshot's epoch and view (the database's version when its first page was
//! read), the table of the page's last record (`k` keys, `u` user revocations, `j` jtis)
//! and that record's id (a key's sha256, a user id, a jti's hash). The epoch in it lets a
//! cursor of another database start a new snapshot even from a sync that does not say
//! its epoch.
//!
//! Read strictly: a cursor is taken only if the service could have written it, byte for
//! byte (the text is decoded, checked field by field and must encode back to itself).
//! It is not signed: a made-up cursor that passes can only point into the snapshot, to
//! records the feed token may read anyway. Callers never quote a refused cursor.

use crate::store::{FeedTable, SnapshotAt, SnapshotPos};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse_core::authn::api_key::is_valid_id;

/// The longest cursor: control/FEED.md promises at most 512 characters. The longest one
/// written (a 64-character epoch, a 19-digit view and a 128-character user id) is 288.
pub const MAX_LEN: usize = 512;

/// The format written into each cursor; another one is refused.
const FORMAT: &str = "1";

fn letter(table: FeedTable) -> &'static str {
    match table {
        FeedTable::Keys => "k",
        FeedTable::Users => "u",
        FeedTable::Jtis => "j",
    }
}

/// An epoch as the service makes them (16 hex digits), with room to spare.
fn valid_epoch(e: &str) -> bool {
    (1..=64).contains(&e.len()) && e.bytes().all(|b| b.is_ascii_alphanumeric())
}

fn lower_hex_64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The cursor of the page that starts after `at.pos`.
pub fn encode(at: &SnapshotAt) -> String {
    let text = format!(
        "{FORMAT}|{}|{}|{}|{}",
        at.epoch,
        at.view,
        letter(at.pos.table),
        at.pos.last
    );
    URL_SAFE_NO_PAD.encode(text)
}

/// The snapshot place `cursor` stands for, or `None` if the service would not have
/// written it.
pub fn decode(cursor: &str) -> Option<SnapshotAt> {
    if cursor.is_empty() || cursor.len() > MAX_LEN {
        return None;
    }
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let mut fields = text.splitn(5, '|');
    let (format, epoch, view, table, last) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if format != FORMAT || !valid_epoch(epoch) {
        return None;
    }
    if view.is_empty() || view.len() > 19 || !view.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // A snapshot with a page after its first has records, so a version of 1 or more.
    let view: i64 = view.parse().ok().filter(|v| *v >= 1)?;
    let table = match table {
        "k" => FeedTable::Keys,
        "u" => FeedTable::Users,
        "j" => FeedTable::Jtis,
        _ => return None,
    };
    let id_ok = match table {
        FeedTable::Keys | FeedTable::Jtis => lower_hex_64(last),
        FeedTable::Users => is_valid_id(last),
    };
    if !id_ok {
        return None;
    }
    let at = SnapshotAt {
        epoch: epoch.to_string(),
        view,
        pos: SnapshotPos {
            table,
            last: last.to_string(),
        },
    };
    // Leading zeros and the like: only the service's own spelling is taken.
    (encode(&at) == cursor).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(table: FeedTable, last: &str) -> SnapshotAt {
        SnapshotAt {
            epoch: "3f1c9a2e7b6d4e01".to_string(),
            view: 1234,
            pos: SnapshotPos {
                table,
                last: last.to_string(),
            },
        }
    }

    fn raw(text: &str) -> String {
        URL_SAFE_NO_PAD.encode(text)
    }

    const HASH: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn cursors_read_back_as_written_and_are_url_safe() {
        for a in [
            at(FeedTable::Keys, HASH),
            at(FeedTable::Users, "user_1@tenant:a+b.c-d"),
            at(FeedTable::Jtis, HASH),
        ] {
            let c = encode(&a);
            assert!(
                c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{c}"
            );
            assert_eq!(decode(&c), Some(a));
        }
    }

    #[test]
    fn the_longest_cursor_is_within_the_promised_length() {
        let a = SnapshotAt {
            epoch: "e".repeat(64),
            view: i64::MAX,
            pos: SnapshotPos {
                table: FeedTable::Users,
                last: "u".repeat(128),
            },
        };
        let c = encode(&a);
        assert!(c.len() <= MAX_LEN, "{}", c.len());
        assert_eq!(decode(&c), Some(a));
    }

    #[test]
    fn anything_the_service_would_not_write_is_refused() {
        let good = encode(&at(FeedTable::Keys, HASH));
        for bad in [
            String::new(),
            "a".repeat(MAX_LEN + 1),
            format!("{good}="),                                // padding
            format!("+{}", &good[1..]),                        // the standard alphabet's +
            format!("{good}!"),                                // not base64
            raw("2|3f1c9a2e7b6d4e01|1234|k|x"),                // another format
            raw("1|3f1c9a2e7b6d4e01|1234|k"),                  // a field missing
            raw(&format!("1|3f1c9a2e7b6d4e01|1234|x|{HASH}")), // unknown table
            raw(&format!(
                "1|3f1c9a2e7b6d4e01|1234|k|{}",
                HASH.to_uppercase()
            )),
            raw(&format!("1|3f1c9a2e7b6d4e01|1234|k|{HASH}0")),
            raw(&format!("1|3f1c9a2e7b6d4e01|1234|j|{HASH}|x")),
            raw("1|3f1c9a2e7b6d4e01|1234|u|not an id"),
            raw("1|3f1c9a2e7b6d4e01|1234|u|"),
            raw(&format!("1||1234|k|{HASH}")), // no epoch
            raw(&format!("1|3f1c|9a2e|1234|k|{HASH}")),
            raw(&format!("1|3f1c9a2e7b6d4e01|0|k|{HASH}")), // view 0
            raw(&format!("1|3f1c9a2e7b6d4e01|-5|k|{HASH}")),
            raw(&format!("1|3f1c9a2e7b6d4e01|+5|k|{HASH}")),
            raw(&format!("1|3f1c9a2e7b6d4e01|01234|k|{HASH}")), // not canonical
            raw(&format!("1|3f1c9a2e7b6d4e01|99999999999999999999|k|{HASH}")),
        ] {
            assert_eq!(decode(&bad), None, "{bad}");
        }
        // Bytes that are not UTF-8.
        assert_eq!(decode(&URL_SAFE_NO_PAD.encode([0xff, 0xfe, b'|'])), None);
    }
}
