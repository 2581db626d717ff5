//! Cron expressions, and when one fires in a time zone.
//!
//! Five fields (`minute hour day-of-month month day-of-week`) or six, with
//! seconds first, as Argo's CronWorkflow, Kubernetes and Quartz write them:
//! `*`, `a-b`, `*/n`, `a-b/n`, `a/n`, lists of those, month and weekday names
//! (`JAN`, `MON`), `?` for `*`, 0 or 7 for Sunday, and `@yearly`,
//! `@monthly`, `@weekly`, `@daily`, `@hourly`. When both day fields are
//! restricted, a day matching either fires (as in Vixie cron).
//!
//! Times are wall-clock times in the schedule's zone, so daylight-saving
//! changes matter. The rule (Vixie cron's, see [`Cron::next_after`]):
//! a schedule at fixed times (no `*` in its second, minute or hour field)
//! fires once per wall-clock time: at fall-back, at the first of the two
//! instants a repeated time has; at spring-forward, a time that does not
//! exist that day fires at the instant it would have had in the old offset
//! (02:30 → 03:30 when clocks skip from 02:00 to 03:00), so no day loses its
//! run. A schedule with `*` in one of those fields follows elapsed time: it
//! fires through the repeated hour again and skips the wall-clock times that
//! do not exist.

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    seconds: u64,
    minutes: u64,
    hours: u32,
    /// Bits 1..=31.
    days: u32,
    /// Bits 1..=12.
    months: u16,
    /// Bits 0..=6, Sunday 0.
    weekdays: u8,
    /// Day of month and day of week both restricted: either fires.
    either_day: bool,
    /// A `*` in the second, minute or hour field: elapsed-time rules at
    /// daylight-saving changes.
    frequent: bool,
}

/// How far ahead [`Cron::next_after`] looks before saying a schedule never
/// fires (a February 29th falling on a weekday asked for is rarer than
/// yearly, never rarer than once in 28 years).
const HORIZON_YEARS: i16 = 30;

/// The widest change of offset a zone makes at once (folds and gaps are
/// within it): the window searched around an instant.
const WIDEST_SHIFT: SignedDuration = SignedDuration::from_hours(3);

const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const WEEKDAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

impl Cron {
    /// Parses `text`; the error says which field is wrong and why.
    pub fn parse(text: &str) -> Result<Cron, String> {
        let text = text.trim();
        let expanded = match text.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 0 1 1 *",
            "@monthly" => "0 0 0 1 * *",
            "@weekly" => "0 0 0 * * 0",
            "@daily" | "@midnight" => "0 0 0 * * *",
            "@hourly" => "0 0 * * * *",
            t if t.starts_with('@') => return Err(format!("unknown cron macro `{text}` (known: @yearly, @monthly, @weekly, @daily, @hourly)")),
            _ => text,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let fields: Vec<&str> = match fields.len() {
            5 => std::iter::once("0").chain(fields).collect(),
            6 => fields,
            n => {
                return Err(format!(
                    "a cron expression has 5 fields (minute hour day-of-month month day-of-week) or 6 (seconds first); `{text}` has {n}"
                ));
            }
        };
        let seconds = field(fields[0], "second", 0, 59, &[])?;
        let minutes = field(fields[1], "minute", 0, 59, &[])?;
        let hours = field(fields[2], "hour", 0, 23, &[])?;
        let days = field(fields[3], "day of month", 1, 31, &[])?;
        let months = field(fields[4], "month", 1, 12, &MONTHS)?;
        let mut weekdays = field(fields[5], "day of week", 0, 7, &WEEKDAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & !(1 << 7);
        }
        let unrestricted = |f: &str| f.starts_with('*') || f == "?";
        Ok(Cron {
            seconds,
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            either_day: !unrestricted(fields[3]) && !unrestricted(fields[5]),
            frequent: fields[..3].iter().any(|f| f.contains('*')),
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        if !bit(self.months as u64, date.month()) {
            return false;
        }
        let dom = bit(self.days as u64, date.day());
        let dow = bit(self.weekdays as u64, date.weekday().to_sunday_zero_offset());
        if self.either_day { dom || dow } else { dom && dow }
    }

    /// The first matching wall-clock time after `dt`, within the horizon.
    fn next_civil(&self, dt: DateTime) -> Option<DateTime> {
        let limit = dt.year().saturating_add(HORIZON_YEARS);
        let mut dt = dt.checked_add(SignedDuration::from_secs(1)).ok()?.with().subsec_nanosecond(0).build().ok()?;
        loop {
            if dt.year() > limit {
                return None;
            }
            if !self.day_matches(dt.date()) {
                dt = dt.date().tomorrow().ok()?.to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if !bit(self.hours as u64, dt.hour()) {
                dt = dt.checked_add(SignedDuration::from_hours(1)).ok()?.with().minute(0).second(0).build().ok()?;
                continue;
            }
            if !bit(self.minutes, dt.minute()) {
                dt = dt.checked_add(SignedDuration::from_mins(1)).ok()?.with().second(0).build().ok()?;
                continue;
            }
            if !bit(self.seconds, dt.second()) {
                dt = dt.checked_add(SignedDuration::from_secs(1)).ok()?;
                continue;
            }
            return Some(dt);
        }
    }

    /// The instants wall-clock time `dt` fires at in `tz`, by the rule in
    /// the module's documentation.
    fn instants(&self, dt: DateTime, tz: &TimeZone) -> Vec<Timestamp> {
        let at = |offset: jiff::tz::Offset| offset.to_timestamp(dt).ok();
        match tz.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => at(offset).into_iter().collect(),
            // Does not exist that day: a fixed time fires at its instant
            // in the old offset; elapsed-time schedules skip it.
            AmbiguousOffset::Gap { before, .. } => if self.frequent { None } else { at(before) }.into_iter().collect(),
            // Comes twice: a fixed time fires at the first.
            AmbiguousOffset::Fold { before, after } => {
                if self.frequent {
                    [at(before), at(after)].into_iter().flatten().collect()
                } else {
                    at(before).into_iter().collect()
                }
            }
        }
    }

    /// The first instant after `t` at which the schedule fires in `tz`;
    /// `None` if it never does (within 30 years).
    pub fn next_after(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let here = tz.to_datetime(t);
        // Near a change of offset, wall-clock times before `here` can
        // have instants after `t` (the second pass of a repeated hour):
        // look from before it.
        let near_change = tz.to_offset(t.checked_sub(WIDEST_SHIFT).ok()?) != tz.to_offset(t.checked_add(WIDEST_SHIFT).ok()?);
        let mut dt = if near_change { here.checked_sub(WIDEST_SHIFT).ok()? } else { here };
        let mut best: Option<Timestamp> = None;
        loop {
            dt = self.next_civil(dt)?;
            if let Some(b) = best
                && dt > tz.to_datetime(b).checked_add(WIDEST_SHIFT).ok()?
            {
                return best;
            }
            for at in self.instants(dt, tz) {
                if at > t && best.is_none_or(|b| at < b) {
                    best = Some(at);
                }
            }
            if best.is_some() && !near_change {
                return best;
            }
        }
    }

    /// The instants it fires at in `(after, until]`, oldest first, at most
    /// `most` of them (the newest `most`, when more).
    pub fn fires_between(&self, after: Timestamp, until: Timestamp, tz: &TimeZone, most: usize) -> Vec<Timestamp> {
        let mut out = std::collections::VecDeque::new();
        let mut t = after;
        while let Some(next) = self.next_after(t, tz) {
            if next > until {
                break;
            }
            if out.len() == most {
                out.pop_front();
            }
            out.push_back(next);
            t = next;
        }
        out.into()
    }
}

fn bit(set: u64, n: i8) -> bool {
    n >= 0 && set & (1u64 << n) != 0
}

/// One field's values as a bit set: `*`, `?`, `a`, `a-b`, `*/n`, `a-b/n`,
/// `a/n` and comma lists; `names` are accepted for `min..` in order.
fn field(text: &str, what: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |t: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(t)) {
            return Ok(min + i as u32);
        }
        let n: u32 = t.parse().map_err(|_| format!("the {what} field: `{t}` is not a number{}", if names.is_empty() { String::new() } else { format!(" or a name ({})", names.join(", ")) }))?;
        if n < min || n > max {
            return Err(format!("the {what} field: {n} is out of range ({min}-{max})"));
        }
        Ok(n)
    };
    let mut set = 0u64;
    for part in text.split(',') {
        if part.is_empty() {
            return Err(format!("the {what} field `{text}` has an empty item"));
        }
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| format!("the {what} field: step `{s}` is not a number"))?;
                if step == 0 {
                    return Err(format!("the {what} field: a step of 0 never advances"));
                }
                (r, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = match range {
            "*" | "?" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None => {
                    let a = value(r)?;
                    (a, if step.is_some() { max } else { a })
                }
            },
        };
        if lo > hi {
            return Err(format!("the {what} field: range `{range}` runs backwards"));
        }
        let mut n = lo;
        while n <= hi {
            set |= 1u64 << n;
            n += step.unwrap_or(1);
        }
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    /// Every firing in `(from, until]`, as RFC 3339 in UTC.
    fn fires(cron: &str, tz: &str, from: &str, until: &str) -> Vec<String> {
        Cron::parse(cron).unwrap().fires_between(ts(from), ts(until), &zone(tz), 1000).iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn five_and_six_fields_ranges_steps_lists_and_names() {
        assert_eq!(fires("*/20 * * * *", "UTC", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"), ["2026-01-01T00:20:00Z", "2026-01-01T00:40:00Z", "2026-01-01T01:00:00Z"]);
        assert_eq!(fires("*/15 * * * * *", "UTC", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"), ["2026-01-01T00:00:15Z", "2026-01-01T00:00:30Z", "2026-01-01T00:00:45Z", "2026-01-01T00:01:00Z"]);
        // 9:30 on weekdays of March; 2026-03-06 is a Friday.
        assert_eq!(fires("30 9 * MAR MON-FRI", "UTC", "2026-03-05T12:00:00Z", "2026-03-10T00:00:00Z"), ["2026-03-06T09:30:00Z", "2026-03-09T09:30:00Z"]);
        assert_eq!(fires("0 0 1,15 * *", "UTC", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"), ["2026-01-15T00:00:00Z", "2026-02-01T00:00:00Z"]);
        // Both day fields: either matches (the 13th, or a Friday).
        assert_eq!(fires("0 12 13 * 5", "UTC", "2026-02-01T00:00:00Z", "2026-02-14T00:00:00Z"), ["2026-02-06T12:00:00Z", "2026-02-13T12:00:00Z"]);
        assert_eq!(fires("0 0 * * 7", "UTC", "2026-01-01T00:00:00Z", "2026-01-05T00:00:00Z"), ["2026-01-04T00:00:00Z"]);
        assert_eq!(fires("@daily", "UTC", "2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z"), ["2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"]);
        assert_eq!(fires("5/20 0 1 1 *", "UTC", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"), ["2026-01-01T00:05:00Z", "2026-01-01T00:25:00Z", "2026-01-01T00:45:00Z"]);
        // Leap days only.
        assert_eq!(fires("0 0 29 2 *", "UTC", "2026-01-01T00:00:00Z", "2033-01-01T00:00:00Z"), ["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]);
    }

    #[test]
    fn mistakes_are_named() {
        for (text, says) in [
            ("* * *", "has 3"),
            ("61 * * * *", "minute field: 61 is out of range (0-59)"),
            ("* 24 * * *", "hour field: 24 is out of range"),
            ("* * 0 * *", "day of month field: 0 is out of range (1-31)"),
            ("* * * FOO *", "`FOO` is not a number or a name"),
            ("*/0 * * * *", "a step of 0"),
            ("5-1 * * * *", "runs backwards"),
            ("1,,2 * * * *", "empty item"),
            ("@reboot", "unknown cron macro"),
        ] {
            let e = Cron::parse(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        // Parses, never fires.
        assert_eq!(Cron::parse("0 0 30 2 *").unwrap().next_after(ts("2026-01-01T00:00:00Z"), &TimeZone::UTC), None);
    }

    /// New York springs forward on 2026-03-08 (02:00 EST → 03:00 EDT) and
    /// falls back on 2026-11-01 (02:00 EDT → 01:00 EST).
    #[test]
    fn daylight_saving_changes_follow_the_zone() {
        let ny = "America/New_York";
        // Daily at 02:30: the day it does not exist, 03:30 EDT (its instant
        // in EST), then 02:30 EDT.
        assert_eq!(
            fires("30 2 * * *", ny, "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z"),
            ["2026-03-07T07:30:00Z", "2026-03-08T07:30:00Z", "2026-03-09T06:30:00Z"]
        );
        // Daily at 03:30 exists every day: never lost.
        assert_eq!(
            fires("30 3 * * *", ny, "2026-03-07T00:00:00Z", "2026-03-10T00:00:00Z"),
            ["2026-03-07T08:30:00Z", "2026-03-08T07:30:00Z", "2026-03-09T07:30:00Z"]
        );
        // Daily at 01:30: twice on the clock at fall-back, once here (EDT).
        assert_eq!(
            fires("30 1 * * *", ny, "2026-10-31T00:00:00Z", "2026-11-03T00:00:00Z"),
            ["2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"]
        );
        // Every 30 minutes follows elapsed time: through both 01:xx hours,
        // every half hour, none twice at once.
        assert_eq!(
            fires("*/30 * * * *", ny, "2026-11-01T04:50:00Z", "2026-11-01T07:10:00Z"),
            ["2026-11-01T05:00:00Z", "2026-11-01T05:30:00Z", "2026-11-01T06:00:00Z", "2026-11-01T06:30:00Z", "2026-11-01T07:00:00Z"]
        );
        // … and skips the wall-clock hour that does not exist.
        assert_eq!(
            fires("0 * * * *", ny, "2026-03-08T05:30:00Z", "2026-03-08T08:30:00Z"),
            ["2026-03-08T06:00:00Z", "2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z"]
        );
        // Asked from inside the repeated hour (01:40 EST, the second pass),
        // a fixed 01:30 is next the day after; an elapsed-time one at 01:45.
        let second_pass = ts("2026-11-01T06:40:00Z");
        assert_eq!(Cron::parse("30 1 * * *").unwrap().next_after(second_pass, &zone(ny)), Some(ts("2026-11-02T06:30:00Z")));
        assert_eq!(Cron::parse("45 * * * *").unwrap().next_after(second_pass, &zone(ny)), Some(ts("2026-11-01T06:45:00Z")));
        // Berlin's change is at 02:00 → 03:00 on 2026-03-29, 03:00 → 02:00 on 2026-10-25.
        assert_eq!(
            fires("15 2 * * *", "Europe/Berlin", "2026-10-24T00:00:00Z", "2026-10-27T00:00:00Z"),
            ["2026-10-24T00:15:00Z", "2026-10-25T00:15:00Z", "2026-10-26T01:15:00Z"]
        );
    }
}
