//! The `window` query parameter of the summaries (`refusals.rs`, `series.rs`): `hour`
//! (the default) or `day`, counted in whole minutes.

use crate::error::ApiError;
use crate::store::minute_of;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowQuery {
    /// `hour` or `day`. A string checked by hand: serde's message for an unknown variant
    /// would quote what the client sent.
    window: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    Hour,
    Day,
}

impl Window {
    pub fn of_query(q: &WindowQuery) -> Result<Window, ApiError> {
        match q.window.as_deref() {
            None | Some("hour") => Ok(Window::Hour),
            Some("day") => Ok(Window::Day),
            Some(_) => Err(ApiError::bad_request("window must be hour or day")),
        }
    }

    /// The minutes it spans: 60 or 1440.
    pub fn minutes(self) -> i64 {
        match self {
            Window::Hour => 60,
            Window::Day => 1440,
        }
    }

    /// The start of its first minute at `now`: the window is the current minute and the
    /// ones before it, [`Window::minutes`] in all.
    pub fn since(self, now: i64) -> i64 {
        minute_of(now) - (self.minutes() - 1) * 60
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_whole_minutes_ending_with_the_current_one() {
        // 2026-01-01T00:59:30Z
        let now = 1_767_225_600 + 3570;
        assert_eq!(Window::Hour.since(now), 1_767_225_600);
        assert_eq!(Window::Day.since(now), 1_767_225_600 + 3540 - 1439 * 60);
    }

    #[test]
    fn only_hour_and_day_are_windows() {
        let q = |w: Option<&str>| WindowQuery {
            window: w.map(str::to_string),
        };
        assert_eq!(Window::of_query(&q(None)).ok(), Some(Window::Hour));
        assert_eq!(Window::of_query(&q(Some("hour"))).ok(), Some(Window::Hour));
        assert_eq!(Window::of_query(&q(Some("day"))).ok(), Some(Window::Day));
        for bad in ["week", "", "Hour", "<b>"] {
            assert!(Window::of_query(&q(Some(bad))).is_err(), "{bad}");
        }
    }
}
