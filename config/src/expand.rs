//! `${env:VAR}` and `${env:VAR:-default}` expansion, applied to the config text
//! before it is parsed (so references work inside flow mappings too). `$$` is a
//! literal `$`. An unset variable without a default expands to nothing, which
//! YAML reads as "not set".

/// A config text whose `${env:…}` references cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// A `${env:` without its closing `}`; `near` is the text from the `$` on (30 characters at most).
    #[error("unterminated ${{env:…}} reference near {near:?}")]
    Unterminated {
        /// The start of the reference.
        near: String,
    },
    /// A variable name that is empty or not made of ASCII letters, digits and `_`.
    #[error("invalid environment variable name {name:?} in ${{env:{reference}}}")]
    InvalidName {
        /// The name as written.
        name: String,
        /// The whole reference between `${env:` and `}`.
        reference: String,
    },
}

/// Expands environment references in `text`, looking names up with `lookup`.
///
/// ```
/// let out = tally_config::expand_env("a: ${env:X:-7} $$", |_| None).unwrap();
/// assert_eq!(out, "a: 7 $");
/// ```
pub fn expand_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix("{env:") {
            let end = body.find('}').ok_or_else(|| ExpandError::Unterminated {
                near: snippet(rest).to_owned(),
            })?;
            let reference = &body[..end];
            let (name, default) = match reference.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (reference, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ExpandError::InvalidName {
                    name: name.to_owned(),
                    reference: reference.to_owned(),
                });
            }
            match lookup(name).filter(|v| !v.is_empty()) {
                Some(value) => out.push_str(&value),
                None => out.push_str(default.unwrap_or("")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn snippet(text: &str) -> &str {
    let end = text.char_indices().nth(30).map_or(text.len(), |(i, _)| i);
    &text[..end]
}
