//! FHIR dates as ranges (http://hl7.org/fhir/R4/search.html#date): `2024` is the whole year,
//! `2024-05-03T10:00:00Z` one second. Times are microseconds since the Unix epoch, UTC; a value
//! without a time zone is taken as UTC. `high` is the last microsecond inside the range.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRange {
    pub low: i64,
    pub high: i64,
}

fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

fn digits(text: &str, what: &str) -> Result<u32, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} must be digits"));
    }
    text.parse().map_err(|_| format!("{what} is out of range"))
}

/// Parses a FHIR date, dateTime or instant (or a partial one, as search allows) into the range
/// it covers.
pub fn parse_date_range(text: &str) -> Result<DateRange, String> {
    let (date_part, time_part) = match text.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (text, None),
    };
    let mut fields = date_part.split('-');
    let year_text = fields.next().unwrap_or_default();
    if year_text.len() != 4 {
        return Err("a date starts with a four-digit year".to_owned());
    }
    let year = i32::try_from(digits(year_text, "the year")?).map_err(|e| e.to_string())?;
    let month = fields
        .next()
        .map(|m| {
            if m.len() == 2 {
                digits(m, "the month")
            } else {
                Err("the month has two digits".to_owned())
            }
        })
        .transpose()?;
    let day = fields
        .next()
        .map(|d| {
            if d.len() == 2 {
                digits(d, "the day")
            } else {
                Err("the day has two digits".to_owned())
            }
        })
        .transpose()?;
    if fields.next().is_some() {
        return Err("a date is YYYY, YYYY-MM or YYYY-MM-DD".to_owned());
    }
    let month_of = |m: u32| {
        u8::try_from(m)
            .ok()
            .and_then(|m| Month::try_from(m).ok())
            .ok_or_else(|| "the month must be 01 to 12".to_owned())
    };
    let date = |y: i32, m: Month, d: u8| {
        Date::from_calendar_date(y, m, d).map_err(|_| format!("{text} is not a calendar date"))
    };
    let start_of = |d: Date| micros(PrimitiveDateTime::new(d, Time::MIDNIGHT).assume_utc());
    match (month, day, time_part) {
        (None, None, None) => {
            let low = start_of(date(year, Month::January, 1)?);
            let high = start_of(date(year + 1, Month::January, 1)?) - 1;
            Ok(DateRange { low, high })
        }
        (Some(m), None, None) => {
            let m = month_of(m)?;
            let first = date(year, m, 1)?;
            let next = if m == Month::December {
                date(year + 1, Month::January, 1)?
            } else {
                date(year, m.next(), 1)?
            };
            Ok(DateRange {
                low: start_of(first),
                high: start_of(next) - 1,
            })
        }
        (Some(m), Some(d), None) => {
            let day = date(
                year,
                month_of(m)?,
                u8::try_from(d).map_err(|e| e.to_string())?,
            )?;
            let low = start_of(day);
            Ok(DateRange {
                low,
                high: low + 86_400_000_000 - 1,
            })
        }
        (Some(m), Some(d), Some(t)) => {
            let day = date(
                year,
                month_of(m)?,
                u8::try_from(d).map_err(|e| e.to_string())?,
            )?;
            parse_time(day, t)
        }
        _ => Err("a time needs a full date before it".to_owned()),
    }
}

/// `hh:mm[:ss[.fff…]][Z|±hh:mm]` on `day`.
fn parse_time(day: Date, text: &str) -> Result<DateRange, String> {
    let (clock, offset) = match text.find(['Z', '+', '-']) {
        Some(at) => (&text[..at], Some(&text[at..])),
        None => (text, None),
    };
    let offset = match offset {
        None | Some("Z") => UtcOffset::UTC,
        Some(zone) => {
            let sign: i8 = if zone.starts_with('-') { -1 } else { 1 };
            let (h, m) = zone[1..]
                .split_once(':')
                .ok_or_else(|| "a time zone is Z or ±hh:mm".to_owned())?;
            let hours = i8::try_from(digits(h, "the zone hour")?).map_err(|e| e.to_string())?;
            let minutes = i8::try_from(digits(m, "the zone minute")?).map_err(|e| e.to_string())?;
            UtcOffset::from_hms(sign * hours, sign * minutes, 0)
                .map_err(|_| "the time zone is out of range".to_owned())?
        }
    };
    let mut parts = clock.split(':');
    let hour = digits(parts.next().unwrap_or_default(), "the hour")?;
    let minute = digits(
        parts.next().ok_or("a time has hours and minutes")?,
        "the minute",
    )?;
    let (second, fraction) = match parts.next() {
        Some(s) => match s.split_once('.') {
            Some((whole, fraction)) => (Some(digits(whole, "the second")?), Some(fraction)),
            None => (Some(digits(s, "the second")?), None),
        },
        None => (None, None),
    };
    if parts.next().is_some() {
        return Err("a time is hh:mm:ss".to_owned());
    }
    let (fraction_micros, width) = match fraction {
        Some(f) => {
            let used = &f[..f.len().min(6)];
            let value = digits(used, "the fraction of a second")?;
            let scale = 10u32.pow(6 - u32::try_from(used.len()).unwrap_or(6));
            (value * scale, i64::from(scale))
        }
        None if second.is_some() => (0, 1_000_000),
        None => (0, 60_000_000),
    };
    let time = Time::from_hms_micro(
        u8::try_from(hour).map_err(|e| e.to_string())?,
        u8::try_from(minute).map_err(|e| e.to_string())?,
        u8::try_from(second.unwrap_or(0)).map_err(|e| e.to_string())?,
        fraction_micros,
    )
    .map_err(|_| "the time is out of range".to_owned())?;
    let low = micros(PrimitiveDateTime::new(day, time).assume_offset(offset));
    Ok(DateRange {
        low,
        high: low + width - 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_dates_cover_their_whole_period() {
        let year = parse_date_range("2024").expect("year");
        assert_eq!(year.low, parse_date_range("2024-01-01").expect("day").low);
        assert_eq!(year.high + 1, parse_date_range("2025").expect("year").low);
        let february = parse_date_range("2024-02").expect("month");
        assert_eq!(february.high + 1 - february.low, 29 * 86_400_000_000);
    }

    #[test]
    fn times_with_zones_are_instants() {
        let utc = parse_date_range("2024-05-03T10:00:00Z").expect("utc");
        let plus_two = parse_date_range("2024-05-03T12:00:00+02:00").expect("zoned");
        assert_eq!(utc, plus_two);
        assert_eq!(utc.high - utc.low + 1, 1_000_000);
        let millis = parse_date_range("2024-05-03T10:00:00.123Z").expect("millis");
        assert_eq!(millis.high - millis.low + 1, 1000);
    }

    #[test]
    fn malformed_dates_are_refused() {
        for bad in [
            "19800-13",
            "1980-13",
            "1980-02-30",
            "1980-5",
            "abcd",
            "1980-05-03T25:00Z",
            "",
        ] {
            assert!(parse_date_range(bad).is_err(), "{bad}");
        }
    }
}
