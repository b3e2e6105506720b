//! `Content-Encoding` handling with a size limit on the decompressed data.
//!
//! Decompression streams through a reader capped at `limit + 1` bytes and never reserves
//! more than that, so a "zip bomb" (small compressed, huge decompressed) is refused after
//! at most `limit + 1` bytes were produced.

use std::io::Read;

use bytes::Bytes;

use crate::budget::{Charge, Exhausted};
use crate::error::RequestError;

/// A supported `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

impl Encoding {
    /// Parses a `Content-Encoding` header value (absent = identity). An unknown encoding is
    /// a 415 naming it.
    pub(crate) fn parse(header: Option<&[u8]>) -> Result<Encoding, RequestError> {
        let Some(raw) = header else {
            return Ok(Encoding::Identity);
        };
        let value = String::from_utf8_lossy(raw);
        let value = value.trim();
        if value.is_empty()
            || value.eq_ignore_ascii_case("identity")
            || value.eq_ignore_ascii_case("none")
        {
            Ok(Encoding::Identity)
        } else if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
            Ok(Encoding::Gzip)
        } else if value.eq_ignore_ascii_case("zstd") {
            Ok(Encoding::Zstd)
        } else {
            Err(RequestError::UnsupportedMediaType(format!(
                "unsupported Content-Encoding {value:?}: expected gzip, zstd or identity"
            )))
        }
    }
}

/// Decodes `body` per `encoding`; fails with 413 when the result exceeds `limit` bytes,
/// with 400 when the compressed data is corrupt, and with 429 when `charge` cannot grow
/// to the compressed plus decompressed bytes held (checked before each buffer growth).
pub(crate) fn decode_body(
    encoding: Encoding,
    body: Bytes,
    limit: usize,
    charge: &mut Charge,
) -> Result<Bytes, RequestError> {
    let compressed = body.len();
    let mut grow = |capacity: usize| charge.ensure(compressed.saturating_add(capacity));
    let decoded = match encoding {
        Encoding::Identity => {
            if body.len() > limit {
                return Err(too_large(limit));
            }
            return Ok(body);
        }
        Encoding::Gzip => read_limited(
            flate2::read::MultiGzDecoder::new(&body[..]),
            body.len(),
            limit,
            &mut grow,
        ),
        Encoding::Zstd => zstd::stream::read::Decoder::with_buffer(&body[..])
            .and_then(|mut decoder| {
                // The frame header names the window the decoder allocates (up to
                // 128 MiB by default), before any output is charged: bound it.
                decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                Ok(decoder)
            })
            .map_err(Decompressed::Corrupt)
            .and_then(|decoder| read_limited(decoder, body.len(), limit, &mut grow)),
    };
    match decoded {
        Ok(data) => Ok(Bytes::from(data)),
        Err(Decompressed::TooLarge) => Err(too_large(limit)),
        Err(Decompressed::Busy(busy)) => Err(RequestError::Busy(busy)),
        Err(Decompressed::Corrupt(e)) => Err(RequestError::Invalid(format!(
            "cannot decompress {} body: {e}",
            match encoding {
                Encoding::Gzip => "gzip",
                _ => "zstd",
            }
        ))),
    }
}

/// Largest zstd window accepted (2^23 = 8 MiB): what zstd's levels up to 19 use;
/// a frame asking for more is refused as invalid instead of allocating it.
pub(crate) const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Largest slice handed to one `read` call.
const READ_WINDOW: usize = 64 * 1024;

fn too_large(limit: usize) -> RequestError {
    RequestError::TooLarge(format!(
        "request body exceeds the limit of {limit} bytes (after decompression)"
    ))
}

/// Why decompression stopped early.
#[derive(Debug)]
enum Decompressed {
    /// More than the limit came out.
    TooLarge,
    /// The in-flight budget cannot cover a larger buffer.
    Busy(Exhausted),
    /// The compressed data is corrupt.
    Corrupt(std::io::Error),
}

/// Reads `reader` to its end; `TooLarge` as soon as more than `limit` bytes come out. The
/// buffer grows geometrically but never beyond `limit + 1` bytes; `grow` is asked before
/// every allocation, with the buffer capacity about to be reserved.
fn read_limited<R: Read>(
    reader: R,
    compressed_len: usize,
    limit: usize,
    grow: &mut dyn FnMut(usize) -> Result<(), Exhausted>,
) -> Result<Vec<u8>, Decompressed> {
    let cap = limit.saturating_add(1);
    let mut reader = reader.take(cap as u64);
    let initial = compressed_len.saturating_mul(4).max(8 * 1024).min(cap);
    grow(initial).map_err(Decompressed::Busy)?;
    let mut out: Vec<u8> = Vec::with_capacity(initial);
    loop {
        if out.len() == out.capacity() {
            if out.len() >= cap {
                break;
            }
            let more = out.capacity().max(8 * 1024).min(cap - out.len());
            grow(out.capacity() + more).map_err(Decompressed::Busy)?;
            out.reserve_exact(more);
        }
        // Zero-fill (and read into) at most one window of the spare capacity at a time.
        let len = out.len();
        let window = (out.capacity() - len).min(READ_WINDOW);
        out.resize(len + window, 0);
        match reader.read(&mut out[len..]) {
            Ok(0) => {
                out.truncate(len);
                break;
            }
            Ok(n) => out.truncate(len + n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => out.truncate(len),
            Err(e) => {
                return Err(Decompressed::Corrupt(e));
            }
        }
    }
    if out.len() > limit {
        Err(Decompressed::TooLarge)
    } else {
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use crate::budget::InFlightBudget;

    /// A charge on a budget large enough for every test here.
    fn charge() -> Charge {
        InFlightBudget::new(1 << 30).charge()
    }

    fn unlimited(_: usize) -> Result<(), Exhausted> {
        Ok(())
    }

    fn gzip(data: &[u8]) -> Bytes {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        Bytes::from(encoder.finish().unwrap())
    }

    #[test]
    fn parses_encodings() {
        assert_eq!(Encoding::parse(None), Ok(Encoding::Identity));
        assert_eq!(Encoding::parse(Some(b"identity")), Ok(Encoding::Identity));
        assert_eq!(Encoding::parse(Some(b"none")), Ok(Encoding::Identity));
        assert_eq!(Encoding::parse(Some(b" GZIP ")), Ok(Encoding::Gzip));
        assert_eq!(Encoding::parse(Some(b"zstd")), Ok(Encoding::Zstd));
        let Err(RequestError::UnsupportedMediaType(message)) = Encoding::parse(Some(b"br")) else {
            panic!("br accepted");
        };
        assert!(message.contains("\"br\""), "{message}");
    }

    #[test]
    fn round_trips_within_limit() {
        let data = vec![7u8; 100_000];
        assert_eq!(
            decode_body(Encoding::Gzip, gzip(&data), 100_000, &mut charge()).unwrap(),
            data
        );
        let zstd = Bytes::from(zstd::encode_all(&data[..], 1).unwrap());
        assert_eq!(
            decode_body(Encoding::Zstd, zstd, 100_000, &mut charge()).unwrap(),
            data
        );
        assert_eq!(
            decode_body(
                Encoding::Identity,
                Bytes::from(data.clone()),
                100_000,
                &mut charge()
            )
            .unwrap(),
            data
        );
        assert_eq!(
            decode_body(Encoding::Gzip, gzip(b""), 10, &mut charge()).unwrap(),
            Bytes::new()
        );
    }

    #[test]
    fn a_zstd_frame_asking_for_a_huge_window_is_refused() {
        use std::io::Write;
        let data = vec![7u8; 100_000];
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        encoder.window_log(27).unwrap();
        encoder.write_all(&data).unwrap();
        let frame = Bytes::from(encoder.finish().unwrap());
        let Err(RequestError::Invalid(message)) =
            decode_body(Encoding::Zstd, frame, 1_000_000, &mut charge())
        else {
            panic!("a 128 MiB window was accepted");
        };
        assert!(message.contains("zstd"), "{message}");
        // The largest allowed window still decodes.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        encoder.window_log(ZSTD_WINDOW_LOG_MAX).unwrap();
        encoder.write_all(&data).unwrap();
        let frame = Bytes::from(encoder.finish().unwrap());
        assert_eq!(
            decode_body(Encoding::Zstd, frame, 1_000_000, &mut charge()).unwrap(),
            data
        );
    }

    #[test]
    fn one_byte_over_the_limit_is_too_large() {
        let data = vec![7u8; 100_001];
        assert!(matches!(
            decode_body(Encoding::Gzip, gzip(&data), 100_000, &mut charge()),
            Err(RequestError::TooLarge(_))
        ));
        assert!(matches!(
            decode_body(
                Encoding::Identity,
                Bytes::from(data),
                100_000,
                &mut charge()
            ),
            Err(RequestError::TooLarge(_))
        ));
    }

    #[test]
    fn bomb_stops_at_the_limit_without_growing_past_it() {
        // 64 MiB of zeros compress to ~64 KiB; the reader must stop after limit + 1 bytes.
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..64 {
            encoder.write_all(&chunk).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        let limit = 1 << 20;
        let out = read_limited(
            flate2::read::MultiGzDecoder::new(&bomb[..]),
            bomb.len(),
            limit,
            &mut unlimited,
        );
        assert!(matches!(out, Err(Decompressed::TooLarge)));
    }

    #[test]
    fn buffer_never_exceeds_limit_plus_one() {
        let limit = 3 * 1024 * 1024 + 17;
        let data = vec![1u8; limit];
        let compressed = gzip(&data);
        let out = read_limited(
            flate2::read::MultiGzDecoder::new(&compressed[..]),
            compressed.len(),
            limit,
            &mut unlimited,
        )
        .unwrap();
        assert_eq!(out.len(), limit);
        assert!(out.capacity() <= limit + 1, "capacity {}", out.capacity());
    }

    #[test]
    fn corrupt_data_is_invalid() {
        let Err(RequestError::Invalid(message)) = decode_body(
            Encoding::Gzip,
            Bytes::from_static(b"not gzip at all"),
            1000,
            &mut charge(),
        ) else {
            panic!("corrupt gzip accepted");
        };
        assert!(message.contains("gzip"), "{message}");
        assert!(matches!(
            decode_body(
                Encoding::Zstd,
                Bytes::from_static(b"not zstd"),
                1000,
                &mut charge()
            ),
            Err(RequestError::Invalid(_))
        ));
    }

    #[test]
    fn decompression_stops_when_the_budget_cannot_cover_the_buffer() {
        let data = vec![7u8; 4 * 1024 * 1024];
        let budget = InFlightBudget::new(1024 * 1024);
        let mut charge = budget.charge();
        let Err(RequestError::Busy(busy)) =
            decode_body(Encoding::Gzip, gzip(&data), 8 * 1024 * 1024, &mut charge)
        else {
            panic!("decompressed past the budget");
        };
        assert_eq!(busy.budget, 1024 * 1024);
        assert!(charge.bytes() <= 1024 * 1024);
        drop(charge);
        assert_eq!(budget.in_use(), 0);
    }
}
