//! `STOW_RATE_LIMIT`: a single rate or a list of time windows.
//!
//! Grammar (rules separated by `,`, first match wins, no match = unlimited):
//! ```text
//! rule  := when '=' rate | rate
//! when  := '*' | days | days ' ' span | span
//! days  := day ('-' day)? ('+' day ('-' day)?)*      e.g. mon-fri, sat+sun
//! span  := HH:MM '-' HH:MM                           end may be 24:00; start > end wraps midnight
//! rate  := size ('/s')? | 'unlimited'                e.g. 10MiB, 500KB/s
//! ```
//! A window that wraps midnight belongs to the day it starts on: `fri 22:00-06:00`
//! covers Saturday 03:00.

use jiff::civil::{DateTime, Weekday};

/// Bytes per second; `None` means unlimited.
pub type Rate = Option<u64>;

/// A parsed `STOW_RATE_LIMIT`: rules tried in order at a local time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateSchedule {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    /// Bit `n` set = weekday `n` (Monday = 0) matches; `None` = every day.
    days: Option<u8>,
    /// Minutes since midnight, `[start, end)`.
    span: Option<(u16, u16)>,
    rate: Rate,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Why a `STOW_RATE_LIMIT` value does not parse. The text is the reason the
/// configuration error gives after the variable and value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// The value is blank.
    #[error("empty value")]
    Empty,
    /// Not a size, a size per second, or `unlimited`.
    #[error("`{0}` is not a rate such as `50MiB` or `unlimited`")]
    Rate(String),
    /// A zero rate; `unlimited` or a positive rate is meant.
    #[error("`{0}` would stop all transfers; use `unlimited` or a positive rate")]
    ZeroRate(String),
    /// Nothing before the `=`.
    #[error("empty window")]
    EmptyWindow,
    /// More than `DAYS HH:MM-HH:MM`.
    #[error("window `{0}` has too many parts; expected `DAYS HH:MM-HH:MM`")]
    TooManyParts(String),
    /// `HH:MM-HH:MM DAYS`.
    #[error("window `{0}`: days must come before the time span")]
    DaysAfterSpan(String),
    /// Not one of mon..sun.
    #[error("`{0}` is not a weekday; use mon, tue, wed, thu, fri, sat, sun")]
    Weekday(String),
    /// Not `HH:MM` within 00:00..=24:00.
    #[error("`{0}` is not a time HH:MM (00:00 to 24:00)")]
    Clock(String),
    /// Not `HH:MM-HH:MM`.
    #[error("`{0}` is not a time span HH:MM-HH:MM")]
    Span(String),
    /// Start and end are the same minute.
    #[error("time span `{0}` is empty")]
    EmptySpan(String),
    /// Starts at 24:00, which is the next day's 00:00.
    #[error("time span `{0}` starts at 24:00")]
    SpanStartsAt24(String),
}

impl RateSchedule {
    /// Parses the `STOW_RATE_LIMIT` syntax (see the module docs).
    pub fn parse(input: &str) -> Result<Self, RateError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(RateError::Empty);
        }
        let mut rules = Vec::new();
        for part in input.split(',') {
            let part = part.trim();
            let (when, rate) = match part.split_once('=') {
                Some((w, r)) => (Some(w.trim()), r.trim()),
                None => (None, part),
            };
            let rate = parse_rate(rate)?;
            let (days, span) = match when {
                None | Some("*") => (None, None),
                Some(w) => parse_when(w)?,
            };
            rules.push(Rule { days, span, rate });
        }
        Ok(Self { rules })
    }

    /// A schedule that is always `rate`.
    pub fn constant(rate: Rate) -> Self {
        Self {
            rules: vec![Rule {
                days: None,
                span: None,
                rate,
            }],
        }
    }

    /// The rate in force at a local wall-clock time.
    pub fn rate_at(&self, local: DateTime) -> Rate {
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        let today = weekday_index(local.weekday());
        let yesterday = (today + 6) % 7;
        for rule in &self.rules {
            let day_ok = |d: u8| rule.days.is_none_or(|mask| mask & (1 << d) != 0);
            let hit = match rule.span {
                None => day_ok(today),
                Some((start, end)) if start < end => {
                    day_ok(today) && (start..end).contains(&minute)
                }
                // Wraps midnight: the late part belongs to today, the early part to yesterday.
                Some((start, end)) => {
                    (minute >= start && day_ok(today)) || (minute < end && day_ok(yesterday))
                }
            };
            if hit {
                return rule.rate;
            }
        }
        None
    }

    /// One mover's share when `n` movers run at once: every window's rate
    /// divided by `n` (rounded down, at least 1 B/s), so the movers together
    /// stay at the limit. Unlimited windows stay unlimited.
    pub fn share(&self, n: u32) -> RateSchedule {
        let n = u64::from(n.max(1));
        Self {
            rules: self
                .rules
                .iter()
                .map(|r| Rule {
                    rate: r.rate.map(|b| (b / n).max(1)),
                    ..r.clone()
                })
                .collect(),
        }
    }

    /// The value of `STOW_RATE_LIMIT` that parses back to this schedule.
    pub fn to_env(&self) -> String {
        self.to_string()
    }
}

/// Prints the `STOW_RATE_LIMIT` syntax, e.g. `mon-fri 09:00-18:00=10MiB,*=200MiB`.
impl std::fmt::Display for RateSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, rule) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match (rule.days, rule.span) {
                (None, None) => f.write_str("*")?,
                (Some(mask), None) => write_days(f, mask)?,
                (None, Some(span)) => write_span(f, span)?,
                (Some(mask), Some(span)) => {
                    write_days(f, mask)?;
                    f.write_str(" ")?;
                    write_span(f, span)?;
                }
            }
            f.write_str("=")?;
            match rule.rate {
                None => f.write_str("unlimited")?,
                Some(b) => write_rate(f, b)?,
            }
        }
        Ok(())
    }
}

/// Runs of consecutive days as `mon-fri`, joined by `+`.
fn write_days(f: &mut std::fmt::Formatter<'_>, mask: u8) -> std::fmt::Result {
    let mut first = true;
    let mut d = 0;
    while d < 7 {
        if mask & (1 << d) == 0 {
            d += 1;
            continue;
        }
        let start = d;
        while d + 1 < 7 && mask & (1 << (d + 1)) != 0 {
            d += 1;
        }
        if !first {
            f.write_str("+")?;
        }
        first = false;
        f.write_str(DAYS[start])?;
        if d > start {
            write!(f, "-{}", DAYS[d])?;
        }
        d += 1;
    }
    Ok(())
}

fn write_span(f: &mut std::fmt::Formatter<'_>, (start, end): (u16, u16)) -> std::fmt::Result {
    write!(
        f,
        "{:02}:{:02}-{:02}:{:02}",
        start / 60,
        start % 60,
        end / 60,
        end % 60
    )
}

/// Exact: the largest binary unit that divides the rate, else plain bytes.
fn write_rate(f: &mut std::fmt::Formatter<'_>, b: u64) -> std::fmt::Result {
    for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if b.is_multiple_of(unit) {
            return write!(f, "{}{name}", b / unit);
        }
    }
    write!(f, "{b}B")
}

fn weekday_index(w: Weekday) -> u8 {
    (w.to_monday_zero_offset()) as u8
}

fn parse_rate(s: &str) -> Result<Rate, RateError> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("unlimited") {
        return Ok(None);
    }
    let body = s.strip_suffix("/s").unwrap_or(s);
    let size: bytesize::ByteSize = body.parse().map_err(|_| RateError::Rate(s.to_string()))?;
    if size.as_u64() == 0 {
        return Err(RateError::ZeroRate(s.to_string()));
    }
    Ok(Some(size.as_u64()))
}

/// Weekday mask and minute span of a window; `None` means "any".
type When = (Option<u8>, Option<(u16, u16)>);

fn parse_when(w: &str) -> Result<When, RateError> {
    let mut parts = w.split_whitespace();
    let first = parts.next().ok_or(RateError::EmptyWindow)?;
    let second = parts.next();
    if parts.next().is_some() {
        return Err(RateError::TooManyParts(w.to_string()));
    }
    if first.contains(':') {
        if second.is_some() {
            return Err(RateError::DaysAfterSpan(w.to_string()));
        }
        return Ok((None, Some(parse_span(first)?)));
    }
    let days = parse_days(first)?;
    let span = second.map(parse_span).transpose()?;
    Ok((Some(days), span))
}

fn parse_day(s: &str) -> Result<u8, RateError> {
    let lower = s.to_ascii_lowercase();
    DAYS.iter()
        .position(|d| lower == *d)
        .map(|i| i as u8)
        .ok_or_else(|| RateError::Weekday(s.to_string()))
}

fn parse_days(s: &str) -> Result<u8, RateError> {
    let mut mask = 0u8;
    for item in s.split('+') {
        match item.split_once('-') {
            Some((a, b)) => {
                let (mut d, end) = (parse_day(a)?, parse_day(b)?);
                loop {
                    mask |= 1 << d;
                    if d == end {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => mask |= 1 << parse_day(item)?,
        }
    }
    Ok(mask)
}

fn parse_clock(s: &str) -> Result<u16, RateError> {
    let bad = || RateError::Clock(s.to_string());
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m >= 60 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn parse_span(s: &str) -> Result<(u16, u16), RateError> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| RateError::Span(s.to_string()))?;
    let (start, end) = (parse_clock(a)?, parse_clock(b)?);
    if start == end {
        return Err(RateError::EmptySpan(s.to_string()));
    }
    if start == 24 * 60 {
        return Err(RateError::SpanStartsAt24(s.to_string()));
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    const MIB: u64 = 1024 * 1024;

    fn at(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> DateTime {
        date(y, mo, d).at(h, mi, 0, 0)
    }

    #[test]
    fn single_rate_applies_always() {
        let s = RateSchedule::parse("50MiB").unwrap();
        assert_eq!(s.rate_at(at(2026, 11, 22, 3, 0)), Some(50 * MIB));
        assert_eq!(
            RateSchedule::parse("500KB/s")
                .unwrap()
                .rate_at(at(2026, 1, 1, 0, 0)),
            Some(500_000)
        );
        assert_eq!(
            RateSchedule::parse("unlimited")
                .unwrap()
                .rate_at(at(2026, 1, 1, 0, 0)),
            None
        );
    }

    #[test]
    fn business_hours_window() {
        let s = RateSchedule::parse("mon-fri 09:00-18:00=10MiB,*=200MiB").unwrap();
        // 2026-11-23 is a Monday.
        assert_eq!(s.rate_at(at(2026, 11, 23, 9, 0)), Some(10 * MIB));
        assert_eq!(s.rate_at(at(2026, 11, 23, 17, 59)), Some(10 * MIB));
        assert_eq!(s.rate_at(at(2026, 11, 23, 18, 0)), Some(200 * MIB));
        assert_eq!(s.rate_at(at(2026, 11, 23, 8, 59)), Some(200 * MIB));
        // Saturday
        assert_eq!(s.rate_at(at(2026, 11, 28, 12, 0)), Some(200 * MIB));
    }

    #[test]
    fn midnight_wrap_belongs_to_start_day() {
        let s = RateSchedule::parse("fri 22:00-06:00=1MiB").unwrap();
        assert_eq!(s.rate_at(at(2026, 11, 27, 23, 0)), Some(MIB)); // Friday night
        assert_eq!(s.rate_at(at(2026, 11, 28, 3, 0)), Some(MIB)); // Saturday early
        assert_eq!(s.rate_at(at(2026, 11, 28, 23, 0)), None); // Saturday night
        assert_eq!(s.rate_at(at(2026, 11, 27, 3, 0)), None); // Friday early: Thursday's window
    }

    #[test]
    fn day_lists_and_wrapping_ranges() {
        let s = RateSchedule::parse("sat+sun=unlimited,fri-mon 00:00-24:00=1MiB").unwrap();
        assert_eq!(s.rate_at(at(2026, 11, 28, 12, 0)), None);
        assert_eq!(s.rate_at(at(2026, 11, 23, 12, 0)), Some(MIB)); // Monday
        assert_eq!(s.rate_at(at(2026, 11, 25, 12, 0)), None); // Wednesday: no rule
        let s = RateSchedule::parse("00:00-12:00=2MiB").unwrap();
        assert_eq!(s.rate_at(at(2026, 11, 25, 11, 59)), Some(2 * MIB));
    }

    #[test]
    fn display_parses_back_to_the_same_schedule() {
        for input in [
            "50MiB",
            "500KB/s",
            "unlimited",
            "mon-fri 09:00-18:00=10MiB,*=200MiB",
            "fri 22:00-06:00=1MiB",
            "sat+sun=unlimited,fri-mon 00:00-24:00=1MiB",
            "00:00-12:00=2MiB,mon+wed+fri=3KiB,tue-thu 23:30-00:15=1GiB,*=7",
        ] {
            let s = RateSchedule::parse(input).unwrap();
            let printed = s.to_env();
            assert_eq!(
                RateSchedule::parse(&printed).unwrap(),
                s,
                "{input} -> {printed}"
            );
        }
        assert_eq!(
            RateSchedule::parse("mon-fri 09:00-18:00=10MiB,*=200MiB")
                .unwrap()
                .to_string(),
            "mon-fri 09:00-18:00=10MiB,*=200MiB"
        );
        assert_eq!(
            RateSchedule::parse("500KB").unwrap().to_string(),
            "*=500000B"
        );
    }

    #[test]
    fn share_divides_every_window() {
        let s = RateSchedule::parse("mon-fri 09:00-18:00=10MiB,sat=unlimited,*=200MiB").unwrap();
        let third = s.share(3);
        assert_eq!(
            third.to_env(),
            "mon-fri 09:00-18:00=3495253B,sat=unlimited,*=69905066B"
        );
        assert_eq!(RateSchedule::parse(&third.to_env()).unwrap(), third);
        assert_eq!(third.rate_at(at(2026, 11, 23, 10, 0)), Some(10 * MIB / 3));
        assert_eq!(third.rate_at(at(2026, 11, 28, 10, 0)), None);
        assert_eq!(third.rate_at(at(2026, 11, 29, 10, 0)), Some(200 * MIB / 3));
        // The shares never add up to more than the limit, and never to zero.
        assert!(3 * third.rate_at(at(2026, 11, 23, 10, 0)).unwrap() <= 10 * MIB);
        assert_eq!(RateSchedule::parse("2").unwrap().share(5).to_env(), "*=1B");
        assert_eq!(s.share(1), s);
        assert_eq!(s.share(0), s);
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "fast",
            "0",
            "mon-fri=",
            "funday=1MiB",
            "mon 9:00-18:00=1MiB",
            "mon 09:00-09:00=1MiB",
            "mon 09:60-10:00=1MiB",
            "mon 25:00-26:00=1MiB",
            "09:00-18:00 mon=1MiB",
            "mon 09:00=1MiB",
            "mon a b=1MiB",
        ] {
            assert!(RateSchedule::parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
