//! Checkpoints kept outside the database: the chainer appends each signed
//! checkpoint to `<checkpoint_dir>/checkpoints-YYYY-MM-DD.ndjson` (the UTC day of
//! `signed_at`), one JSON object a line, and fsyncs it before its run commits;
//! `tally verify --checkpoints DIR` reads them back (see `docs/tamper-evidence.md`).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, NaiveDate, Utc};
use ed25519_dalek::Verifier;
use serde::{Deserialize, Serialize};

use super::canonical::{checkpoint_message, hex, key_id};
use super::VerifyingKey;
use crate::postgres::PgError;

/// File name prefix and suffix of a day's checkpoint file.
const FILE_PREFIX: &str = "checkpoints-";
const FILE_SUFFIX: &str = ".ndjson";

/// One line of a checkpoint file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalCheckpoint {
    /// The tenant (`''`: events without a tenant).
    pub tenant: String,
    /// The chain's `seq` the checkpoint covers.
    pub seq: i64,
    /// The chain's `row_hash` at `seq`, hex.
    pub head_hash: String,
    /// RFC 3339 with microseconds, UTC.
    pub signed_at: String,
    /// The id of the signing key.
    pub key_id: String,
    /// Ed25519 over the checkpoint message, hex.
    pub signature: String,
}

impl ExternalCheckpoint {
    /// The line for a checkpoint signed by the chainer.
    pub fn new(
        tenant: &str,
        seq: i64,
        head_hash: &[u8],
        signed_at: DateTime<Utc>,
        key_id: &str,
        signature: &[u8],
    ) -> ExternalCheckpoint {
        ExternalCheckpoint {
            tenant: tenant.to_owned(),
            seq,
            head_hash: hex(head_hash),
            signed_at: signed_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            key_id: key_id.to_owned(),
            signature: hex(signature),
        }
    }
}

/// The path of `day`'s checkpoint file in `dir`.
pub fn checkpoint_file(dir: &Path, day: NaiveDate) -> PathBuf {
    dir.join(format!(
        "{FILE_PREFIX}{}{FILE_SUFFIX}",
        day.format("%Y-%m-%d")
    ))
}

/// Appends `checkpoints` to `day`'s file in `dir` (created, with `dir`, when
/// missing) in one write, then fsyncs the file (and `dir` when the file is new).
/// Blocking: call it from a blocking context.
pub fn append_checkpoints(
    dir: &Path,
    day: NaiveDate,
    checkpoints: &[ExternalCheckpoint],
) -> Result<(), PgError> {
    if checkpoints.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    for checkpoint in checkpoints {
        let line = serde_json::to_string(checkpoint)
            .map_err(|e| PgError::Integrity(format!("cannot encode a checkpoint: {e}")))?;
        text.push_str(&line);
        text.push('\n');
    }
    let path = checkpoint_file(dir, day);
    let context = |what: &str| format!("{what} {}", path.display());
    std::fs::create_dir_all(dir).map_err(|e| {
        PgError::io(
            format!("cannot create the checkpoint directory {}", dir.display()),
            e,
        )
    })?;
    let new = !path.exists();
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o640);
    }
    let mut file = options
        .open(&path)
        .map_err(|e| PgError::io(context("cannot open the checkpoint file"), e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| PgError::io(context("cannot append to the checkpoint file"), e))?;
    file.sync_all()
        .map_err(|e| PgError::io(context("cannot fsync the checkpoint file"), e))?;
    if new {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| {
                PgError::io(
                    format!("cannot fsync the checkpoint directory {}", dir.display()),
                    e,
                )
            })?;
    }
    Ok(())
}

/// What a checkpoint directory holds.
#[derive(Debug, Default)]
pub struct ExternalCheckpoints {
    /// Per tenant, the head hash at each checkpointed seq.
    pub heads: BTreeMap<String, BTreeMap<i64, Vec<u8>>>,
    /// Files and lines read.
    pub files: usize,
    /// Lines read.
    pub lines: usize,
    /// Lines that are not acceptable checkpoints (`file:line: why`): a signature
    /// that does not verify, an untrusted key, two hashes for one seq.
    pub problems: Vec<String>,
    /// A last line cut short (no final newline, not JSON): a write interrupted by
    /// a crash, skipped (`file:line`).
    pub torn: Vec<String>,
}

/// Reads every `checkpoints-*.ndjson` file in `dir`. With `trusted` keys, each
/// line's signature must verify with one of them (else it is listed in
/// `problems`); without, signatures are not checked. An unreadable directory or
/// file, or a line that is not a checkpoint, is an error.
pub fn read_checkpoint_dir(
    dir: &Path,
    trusted: &[VerifyingKey],
) -> Result<ExternalCheckpoints, PgError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        PgError::io(
            format!("cannot read the checkpoint directory {}", dir.display()),
            e,
        )
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            PgError::io(
                format!("cannot read the checkpoint directory {}", dir.display()),
                e,
            )
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(FILE_PREFIX) && name.ends_with(FILE_SUFFIX) {
            paths.push(entry.path());
        }
    }
    paths.sort();
    let keys: BTreeMap<String, VerifyingKey> = trusted.iter().map(|k| (key_id(k), *k)).collect();
    let mut out = ExternalCheckpoints::default();
    for path in &paths {
        let text = std::fs::read_to_string(path).map_err(|e| {
            PgError::io(
                format!("cannot read the checkpoint file {}", path.display()),
                e,
            )
        })?;
        out.files += 1;
        let complete = text.ends_with('\n');
        let lines: Vec<&str> = text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            let at = format!("{}:{}", path.display(), index + 1);
            if line.trim().is_empty() {
                continue;
            }
            let checkpoint: ExternalCheckpoint = match serde_json::from_str(line) {
                Ok(checkpoint) => checkpoint,
                Err(_) if !complete && index + 1 == lines.len() => {
                    out.torn.push(at);
                    continue;
                }
                Err(e) => {
                    return Err(PgError::Integrity(format!(
                        "{at}: not a checkpoint line: {e}"
                    )))
                }
            };
            out.lines += 1;
            let (Ok(hash), Ok(signature), Ok(signed_at)) = (
                ::hex::decode(&checkpoint.head_hash),
                ::hex::decode(&checkpoint.signature),
                DateTime::parse_from_rfc3339(&checkpoint.signed_at),
            ) else {
                return Err(PgError::Integrity(format!(
                    "{at}: head_hash, signature or signed_at is malformed"
                )));
            };
            if !trusted.is_empty() {
                let message = checkpoint_message(
                    &checkpoint.tenant,
                    checkpoint.seq,
                    &hash,
                    signed_at.with_timezone(&Utc),
                );
                let verifies = keys.get(&checkpoint.key_id).is_some_and(|key| {
                    ed25519_dalek::Signature::from_slice(&signature)
                        .is_ok_and(|s| key.verify(&message, &s).is_ok())
                });
                if !verifies {
                    out.problems.push(format!(
                        "{at}: the checkpoint of seq {} is not signed by a trusted key \
                         (forged or altered line)",
                        checkpoint.seq
                    ));
                    continue;
                }
            }
            let heads = out.heads.entry(checkpoint.tenant).or_default();
            if let Some(previous) = heads.insert(checkpoint.seq, hash.clone()) {
                if previous != hash {
                    out.problems.push(format!(
                        "{at}: seq {} has another head hash in an earlier line",
                        checkpoint.seq
                    ));
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::chain::SigningKey;
    use ed25519_dalek::Signer;

    fn signed(key: &SigningKey, tenant: &str, seq: i64, hash: &[u8]) -> ExternalCheckpoint {
        let at = DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap_or_default();
        let signature = key.sign(&checkpoint_message(tenant, seq, hash, at));
        ExternalCheckpoint::new(
            tenant,
            seq,
            hash,
            at,
            &key_id(&key.verifying_key()),
            &signature.to_bytes(),
        )
    }

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("tally-cp-{}", uuid::Uuid::new_v4().simple()))
    }

    #[test]
    fn appended_checkpoints_read_back_and_forged_lines_are_listed() {
        let dir = temp_dir();
        let key = SigningKey::from_bytes(&[3; 32]);
        let other = SigningKey::from_bytes(&[4; 32]);
        let day = NaiveDate::from_ymd_opt(2026, 1, 5).unwrap_or_default();
        append_checkpoints(&dir, day, &[signed(&key, "acme", 7, &[1; 32])]).expect("append");
        append_checkpoints(
            &dir,
            day,
            &[
                signed(&key, "", 9, &[2; 32]),
                signed(&other, "acme", 11, &[3; 32]),
            ],
        )
        .expect("append");
        let read = read_checkpoint_dir(&dir, &[key.verifying_key()]).expect("read");
        assert_eq!((read.files, read.lines), (1, 3));
        assert_eq!(read.heads["acme"].get(&7), Some(&vec![1; 32]));
        assert_eq!(read.heads[""].get(&9), Some(&vec![2; 32]));
        assert_eq!(read.heads["acme"].get(&11), None);
        assert_eq!(read.problems.len(), 1, "{:?}", read.problems);
        assert!(read.problems[0].contains(":3:"), "{:?}", read.problems);

        // A torn last line is skipped; a bad line elsewhere is an error.
        let path = checkpoint_file(&dir, day);
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        file.write_all(b"{\"tenant\":\"ac").expect("write");
        let read = read_checkpoint_dir(&dir, &[key.verifying_key()]).expect("read");
        assert_eq!(read.torn.len(), 1);
        file.write_all(b"\n").expect("write");
        assert!(read_checkpoint_dir(&dir, &[key.verifying_key()]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(read_checkpoint_dir(&dir, &[]).is_err());
    }
}
