//! Opaque keyset cursors.
//!
//! A cursor is the position after the last row of a page: its `ts` (microseconds
//! since the Unix epoch) and `id`. Encoding: base64url without padding of
//! `[version = 1][ts: i64 big-endian][id: 16 bytes]` (25 bytes, 34 characters).
//! The next page is `WHERE (ts, id) < (cursor.ts, cursor.id)`, so rows inserted
//! meanwhile never shift a page. A cursor carries no filters: it is not signed,
//! and a forged one only moves the position inside what the caller may read.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Datelike, Utc};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::error::ApiError;

const VERSION: u8 = 1;
const LEN: usize = 1 + 8 + 16;

/// A position in the `ORDER BY ts DESC, id DESC` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Event time of the last row returned.
    pub ts: DateTime<Utc>,
    /// Id of the last row returned.
    pub id: Uuid,
}

impl Cursor {
    /// The opaque text form.
    pub fn encode(&self) -> String {
        let mut bytes = [0u8; LEN];
        bytes[0] = VERSION;
        bytes[1..9].copy_from_slice(&self.ts.timestamp_micros().to_be_bytes());
        bytes[9..].copy_from_slice(self.id.as_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Parses a cursor; anything not produced by [`Cursor::encode`] is `invalid_cursor`.
    pub fn decode(text: &str) -> Result<Cursor, ApiError> {
        let invalid = || ApiError::InvalidCursor("not a cursor returned by this API".to_owned());
        if text.len() > 64 {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
        if bytes.len() != LEN || bytes[0] != VERSION {
            return Err(invalid());
        }
        let mut micros = [0u8; 8];
        micros.copy_from_slice(&bytes[1..9]);
        let ts = DateTime::from_timestamp_micros(i64::from_be_bytes(micros))
            .filter(|ts| (0..=9999).contains(&ts.year()))
            .ok_or_else(invalid)?;
        let id = Uuid::from_slice(&bytes[9..]).map_err(|_| invalid())?;
        Ok(Cursor { ts, id })
    }

    /// The position of a row selected with its `ts` and `id` columns.
    pub fn of_row(row: &Row) -> Result<Cursor, tokio_postgres::Error> {
        Ok(Cursor {
            ts: row.try_get("ts")?,
            id: row.try_get("id")?,
        })
    }
}

/// One page of a keyset-paginated list read with `limit + 1` rows (newest
/// first): the first `limit` rows as items, and the cursor after the last of
/// them when another row came back (`None`: the last page).
pub(crate) fn page<T>(
    rows: &[Row],
    limit: u32,
    item: impl Fn(&Row) -> Result<T, tokio_postgres::Error>,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let limit = limit as usize;
    let has_more = rows.len() > limit;
    let mut items = Vec::with_capacity(rows.len().min(limit));
    let mut last = None;
    for row in rows.iter().take(limit) {
        items.push(item(row).map_err(ApiError::from_db)?);
        last = Some(row);
    }
    let next_cursor = match last {
        Some(row) if has_more => Some(Cursor::of_row(row).map_err(ApiError::from_db)?.encode()),
        _ => None,
    };
    Ok((items, next_cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let cursor = Cursor {
            ts: DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap(),
            id: Uuid::new_v4(),
        };
        let text = cursor.encode();
        assert_eq!(text.len(), 34);
        assert_eq!(Cursor::decode(&text).unwrap(), cursor);
    }

    #[test]
    fn rejects_garbage() {
        let good = Cursor {
            ts: DateTime::from_timestamp_micros(0).unwrap(),
            id: Uuid::nil(),
        }
        .encode();
        for bad in [
            "",
            "!!!",
            "abc",
            &good[..good.len() - 1],
            &format!("{good}AA"),
            // version 2
            &URL_SAFE_NO_PAD.encode([2u8; LEN]),
            // timestamp out of chrono's range
            &URL_SAFE_NO_PAD.encode({
                let mut b = [0x7fu8; LEN];
                b[0] = VERSION;
                b
            }),
        ] {
            assert!(
                matches!(Cursor::decode(bad), Err(ApiError::InvalidCursor(_))),
                "{bad:?}"
            );
        }
    }
}
