//! The console's files, embedded in the binary and prepared once, at first use:
//! each module's references to the files before it are rewritten to their
//! content-hashed names, then each file is hashed and gzip-compressed.
//!
//! Files are listed leaves first, so that when a file is prepared every file it
//! refers to already has its final name (a module's name then changes whenever
//! a module it imports changes, and a cached copy is never stale).

use std::io::Write;
use std::sync::LazyLock;

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

/// Where the hashed files are served.
pub const ASSET_PREFIX: &str = "/console/assets/";

/// One source file: its name as written in the sources, its media type, its text.
struct Source {
    name: &'static str,
    content_type: &'static str,
    text: &'static str,
}

macro_rules! source {
    ($name:literal, $type:expr) => {
        Source {
            name: $name,
            content_type: $type,
            text: include_str!(concat!("../../console/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file, leaves first; `index.html` last (it is served at `/console`).
fn sources() -> [Source; 11] {
    [
        source!("style.css", CSS),
        source!("dom.js", JS),
        source!("api.js", JS),
        source!("format.js", JS),
        source!("chart.js", JS),
        source!("live.js", JS),
        source!("search.js", JS),
        source!("usage.js", JS),
        source!("ops.js", JS),
        source!("app.js", JS),
        source!("index.html", "text/html; charset=utf-8"),
    ]
}

/// A prepared file.
pub struct Asset {
    /// The name as written in the sources (`app.js`).
    pub name: &'static str,
    /// The served name (`app.3f2a9c01d4e5.js`); `index.html` keeps its name.
    pub hashed_name: String,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The bytes (after rewriting references).
    pub body: Vec<u8>,
    /// The same, gzip-compressed.
    pub gzip: Vec<u8>,
    /// A strong ETag (`"<hash>"`).
    pub etag: String,
}

/// All prepared files.
pub struct Assets {
    files: Vec<Asset>,
}

impl Assets {
    /// The file served under `hashed_name` (never `index.html`).
    pub fn by_hashed_name(&self, hashed_name: &str) -> Option<&Asset> {
        self.files
            .iter()
            .find(|asset| asset.name != "index.html" && asset.hashed_name == hashed_name)
    }

    /// The page itself.
    pub fn index(&self) -> &Asset {
        // `sources()` ends with index.html, so the list is never empty.
        &self.files[self.files.len() - 1]
    }

    /// Every file, leaves first.
    pub fn all(&self) -> &[Asset] {
        &self.files
    }
}

/// The prepared files, built on first use.
pub fn assets() -> &'static Assets {
    static ASSETS: LazyLock<Assets> = LazyLock::new(prepare);
    &ASSETS
}

/// The first 12 hex digits of the SHA-256 of `bytes`.
fn short_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(&digest[..6])
}

/// `app.js` + `3f2a…` → `app.3f2a….js`.
fn hashed(name: &str, hash: &str) -> String {
    match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
        None => format!("{name}.{hash}"),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 3), Compression::best());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(bytes);
    encoder.finish().unwrap_or_default()
}

fn prepare() -> Assets {
    let mut files: Vec<Asset> = Vec::new();
    for source in sources() {
        let mut text = source.text.to_owned();
        for earlier in &files {
            // Modules import siblings as "./name"; the page links "/console/assets/name".
            text = text
                .replace(
                    &format!("\"./{}\"", earlier.name),
                    &format!("\"./{}\"", earlier.hashed_name),
                )
                .replace(
                    &format!("\"{ASSET_PREFIX}{}\"", earlier.name),
                    &format!("\"{ASSET_PREFIX}{}\"", earlier.hashed_name),
                );
        }
        let hash = short_hash(text.as_bytes());
        let hashed_name = if source.name == "index.html" {
            source.name.to_owned()
        } else {
            hashed(source.name, &hash)
        };
        let body = text.into_bytes();
        files.push(Asset {
            name: source.name,
            hashed_name,
            content_type: source.content_type,
            gzip: gzip(&body),
            body,
            etag: format!("\"{hash}\""),
        });
    }
    Assets { files }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_is_rewritten_to_a_hashed_name() {
        let assets = assets();
        for asset in assets.all() {
            let text = std::str::from_utf8(&asset.body).expect("utf-8");
            for other in assets.all().iter().filter(|o| o.name != "index.html") {
                assert!(
                    !text.contains(&format!("\"./{}\"", other.name))
                        && !text.contains(&format!("\"{ASSET_PREFIX}{}\"", other.name)),
                    "{} still refers to {} by its plain name",
                    asset.name,
                    other.name
                );
            }
        }
        let index = std::str::from_utf8(&assets.index().body).expect("utf-8");
        for name in ["app.js", "style.css"] {
            let asset = assets.all().iter().find(|a| a.name == name).expect(name);
            assert!(index.contains(&asset.hashed_name), "index links {name}");
        }
    }

    #[test]
    fn gzip_variants_decode_to_the_bodies() {
        use std::io::Read;
        for asset in assets().all() {
            let mut decoded = Vec::new();
            flate2::read::GzDecoder::new(asset.gzip.as_slice())
                .read_to_end(&mut decoded)
                .expect("gunzip");
            assert_eq!(decoded, asset.body, "{}", asset.name);
        }
    }

    #[test]
    fn hashed_names_keep_the_extension() {
        assert_eq!(hashed("app.js", "abc"), "app.abc.js");
        assert_eq!(hashed("README", "abc"), "README.abc");
    }
}
