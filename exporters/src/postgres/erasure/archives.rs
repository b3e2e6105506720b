//! Which retention archives still hold a row of an erased user.

use super::*;

/// The data files of the archives under `dir` (see
/// [`archive_manifests`](crate::postgres::archive::archive_manifests)) that hold a row of
/// `user` in `tenant` (`tenant_id` and `user_id` as archived), sorted. A missing
/// directory holds none; an unreadable one, manifest or data file is an error.
/// Reads every data file whose manifest lists the tenant, line by line (NDJSON)
/// or its `tenant_id` and `user_id` columns (Parquet).
pub fn archives_holding(
    dir: &std::path::Path,
    tenant: &str,
    user: &str,
) -> Result<Vec<String>, PgError> {
    use std::io::BufRead;
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let needle = format!(
        "\"user_id\":{}",
        serde_json::to_string(user).unwrap_or_default()
    );
    let mut found = Vec::new();
    for manifest_path in crate::postgres::archive::archive_manifests(dir)? {
        let text = std::fs::read_to_string(&manifest_path)
            .map_err(|e| PgError::io(format!("cannot read {}", manifest_path.display()), e))?;
        let manifest: crate::postgres::archive::Manifest =
            serde_json::from_str(&text).map_err(|e| {
                PgError::Integrity(format!(
                    "{} is not a manifest: {e}",
                    manifest_path.display()
                ))
            })?;
        if !manifest.tenants.iter().any(|t| t.tenant == tenant) {
            continue;
        }
        let data = manifest_path
            .parent()
            .unwrap_or(dir)
            .join(&manifest.data_file);
        if manifest.data_format == "parquet" {
            if crate::postgres::archive::parquet_file::holds_user(&data, tenant, user)? {
                found.push(data.display().to_string());
            }
            continue;
        }
        let file = std::fs::File::open(&data)
            .map_err(|e| PgError::io(format!("cannot open {}", data.display()), e))?;
        for line in std::io::BufReader::with_capacity(1 << 20, file).lines() {
            let line =
                line.map_err(|e| PgError::io(format!("cannot read {}", data.display()), e))?;
            if !line.contains(&needle) {
                continue;
            }
            let Ok(row) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if row.get("tenant_id").and_then(|v| v.as_str()) == Some(tenant)
                && row.get("user_id").and_then(|v| v.as_str()) == Some(user)
            {
                found.push(data.display().to_string());
                break;
            }
        }
    }
    found.sort();
    Ok(found)
}
