//! CSV answers for spreadsheets: which format a request asked for, and the
//! CSV body.
//!
//! A request gets CSV with `format=csv`, or with `Accept: text/csv` (and no
//! `format`); JSON otherwise. The body is RFC 4180 (the `csv` crate's
//! quoting: fields with commas, quotes or line breaks are quoted, quotes
//! doubled), with a header row. Ad ids come from clients, and a cell
//! starting with `=`, `+`, `-`, `@` (or a tab or carriage return, which
//! some spreadsheets skip before one of those) would run as a formula when
//! the file is opened, so such a cell gets a leading `'`, which spreadsheets
//! show as text (OWASP's advice for CSV injection).

use axum::http::header::{ACCEPT, CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// The formats an answer can take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/json`, the default.
    Json,
    /// `text/csv`.
    Csv,
}

impl Format {
    /// From the `format` parameter, else the `Accept` header.
    pub fn negotiate(format: Option<&str>, headers: &HeaderMap) -> Result<Self, ApiError> {
        match format {
            Some("json") => Ok(Format::Json),
            Some("csv") => Ok(Format::Csv),
            Some(other) => Err(ApiError::BadRequest(format!(
                "format must be `json` or `csv`, got {:?}",
                other.chars().take(32).collect::<String>()
            ))),
            None => {
                let wants_csv = headers
                    .get_all(ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|range| {
                        range
                            .split(';')
                            .next()
                            .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/csv"))
                    });
                Ok(if wants_csv { Format::Csv } else { Format::Json })
            }
        }
    }
}

/// `cell` as a spreadsheet will show it, never run it (see the module
/// docs).
pub fn guard(cell: &str) -> std::borrow::Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

/// A CSV answer: `header`, then `rows`, each cell guarded; offered as
/// `filename` to browsers that save it.
pub fn response<I, R, C>(filename: &str, header: &[&str], rows: I) -> Result<Response, ApiError>
where
    I: IntoIterator<Item = R>,
    R: IntoIterator<Item = C>,
    C: AsRef<str>,
{
    let mut out = csv::Writer::from_writer(Vec::new());
    let failed = |e: csv::Error| ApiError::Internal(format!("writing CSV: {e}"));
    out.write_record(header).map_err(failed)?;
    for row in rows {
        let cells: Vec<String> = row
            .into_iter()
            .map(|c| guard(c.as_ref()).into_owned())
            .collect();
        out.write_record(&cells).map_err(failed)?;
    }
    let body = out
        .into_inner()
        .map_err(|e| ApiError::Internal(format!("writing CSV: {e}")))?;
    let disposition = HeaderValue::from_str(&format!("inline; filename=\"{filename}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("inline"));
    Ok((
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_guarded_and_others_kept() {
        for (cell, shown) in [
            ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"),
            ("+1", "'+1"),
            ("-1", "'-1"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\t=1", "'\t=1"),
            ("banner-1", "banner-1"),
            ("a=b", "a=b"),
            ("", ""),
        ] {
            assert_eq!(guard(cell), shown);
        }
    }

    #[test]
    fn accept_and_format_choose() {
        let mut headers = HeaderMap::new();
        assert_eq!(Format::negotiate(None, &headers).unwrap(), Format::Json);
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/CSV;q=0.5"),
        );
        assert_eq!(Format::negotiate(None, &headers).unwrap(), Format::Csv);
        assert_eq!(
            Format::negotiate(Some("json"), &headers).unwrap(),
            Format::Json
        );
        assert!(Format::negotiate(Some("xml"), &headers).is_err());
    }
}
