//! Conditional-request headers: `If-Match`, `If-None-Match`, `If-Modified-Since`, and the
//! headers every resource response carries.

use std::time::{Duration, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::error::FhirError;
use crate::store::{Micros, Version};

/// Parses a version tag: `W/"3"`, `"3"` or `3`.
pub fn parse_version_tag(value: &str) -> Option<i64> {
    let value = value.trim();
    let value = value.strip_prefix("W/").unwrap_or(value);
    let value = value.trim_matches('"');
    value.parse::<i64>().ok().filter(|v| *v > 0)
}

/// `If-Match`: the version the client believes is current.
pub fn if_match(headers: &HeaderMap) -> Result<Option<i64>, FhirError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(parse_version_tag)
        .map(Some)
        .ok_or_else(|| {
            FhirError::BadRequest(vec![
                crate::error::Issue::error(
                    "invalid",
                    "If-Match must be a version tag such as W/\"3\"",
                )
                .at("If-Match"),
            ])
        })
}

/// Whether a read can be answered with 304 Not Modified.
pub fn not_modified(headers: &HeaderMap, version: &Version) -> bool {
    if let Some(tags) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        // When If-None-Match is present, If-Modified-Since is ignored (RFC 9110 13.1.3).
        return tags
            .split(',')
            .any(|tag| tag.trim() == "*" || parse_version_tag(tag) == Some(version.version_id));
    }
    if let Some(since) = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    {
        let since_secs = since
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        // HTTP dates have whole seconds: compare at that precision.
        let modified_secs =
            u64::try_from(version.last_updated.0.div_euclid(1_000_000)).unwrap_or(0);
        return modified_secs <= since_secs;
    }
    false
}

/// `ETag`, `Last-Modified` and (when given) `Location` for a version.
pub fn version_headers(
    version: &Version,
    location: Option<&str>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::with_capacity(3);
    if let Ok(etag) = HeaderValue::from_str(&version.etag()) {
        headers.push((header::ETAG, etag));
    }
    if let Ok(date) = HeaderValue::from_str(&version.last_updated.to_http_date()) {
        headers.push((header::LAST_MODIFIED, date));
    }
    if let Some(location) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        headers.push((header::LOCATION, location.clone()));
        headers.push((header::CONTENT_LOCATION, location));
    }
    headers
}

/// Parses an `instant` or `dateTime` as FHIR writes them, or a date (`2024-05-01`, taken as its
/// first moment, UTC).
pub fn parse_instant(value: &str) -> Option<Micros> {
    use time::format_description::well_known::Rfc3339;
    // A `+` in a query string arrives as a space when the client did not encode it.
    let value = value.trim().replace(' ', "+");
    if let Ok(t) = time::OffsetDateTime::parse(&value, &Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos() / 1000)
            .ok()
            .map(Micros);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(&value, &format).ok()?;
    let t = date.midnight().assume_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1000)
        .ok()
        .map(Micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_tags_in_every_form_parse() {
        assert_eq!(parse_version_tag("W/\"3\""), Some(3));
        assert_eq!(parse_version_tag("\"12\""), Some(12));
        assert_eq!(parse_version_tag(" 7 "), Some(7));
        assert_eq!(parse_version_tag("W/\"x\""), None);
        assert_eq!(parse_version_tag("0"), None);
    }

    #[test]
    fn instants_dates_and_unencoded_plus_signs_parse() {
        let utc = parse_instant("2024-05-01T10:00:00Z").map(|m| m.0);
        assert_eq!(utc, Some(1_714_557_600_000_000));
        assert_eq!(parse_instant("2024-05-01T12:00:00 02:00").map(|m| m.0), utc);
        assert_eq!(
            parse_instant("2024-05-01").map(|m| m.0),
            Some(1_714_521_600_000_000)
        );
        assert_eq!(parse_instant("yesterday"), None);
    }

    #[test]
    fn instants_are_written_with_microseconds_in_utc() {
        assert_eq!(
            Micros(1_714_557_600_123_456).to_instant(),
            "2024-05-01T10:00:00.123456Z"
        );
        assert_eq!(
            Micros(1_714_557_600_123_456).to_http_date(),
            "Wed, 01 May 2024 10:00:00 GMT"
        );
    }
}
