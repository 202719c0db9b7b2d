//! Geometry shared by the inline SVG charts of every report (run, compare, history): number formatting, a linear
//! scale and the whiskers that draw a figure's 95 % interval next to its median.

use serde::Serialize;
use testbed_api::results::Stats;

/// A figure as the reports print it: whole numbers from 100 up, three decimals below (latencies under 1 ms).
pub fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Linear map from the values `lo..=hi` onto `0..=px` pixels. Callers choose `lo`/`hi` to cover every value they
/// draw (medians and interval ends), so nothing lands outside the chart.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    lo: f64,
    hi: f64,
    px: f64,
}

impl Scale {
    /// A scale over `lo..=hi`; an empty or inverted range (every value equal) becomes `lo..=lo + 1` so that
    /// the single value is drawn at the start instead of dividing by zero.
    pub fn new(lo: f64, hi: f64, px: f64) -> Scale {
        let hi = if hi > lo && hi.is_finite() { hi } else { lo + 1.0 };
        Scale { lo, hi, px }
    }

    /// The smallest scale from 0 that covers every value of `values`.
    pub fn from_zero(values: impl IntoIterator<Item = f64>, px: f64) -> Scale {
        Scale::new(0.0, values.into_iter().filter(|v| v.is_finite()).fold(0.0, f64::max), px)
    }

    /// Pixel position of `v`.
    pub fn at(&self, v: f64) -> f64 {
        (v - self.lo) / (self.hi - self.lo) * self.px
    }
}

/// The interval of a figure in pixels, drawn as a horizontal (or vertical) line with end caps.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Whisker {
    pub lo: f64,
    pub hi: f64,
}

/// The 95 % interval of the mean as recorded in `stats`; None below 2 samples (no interval exists).
pub fn interval(stats: &Stats) -> Option<(f64, f64)> {
    stats.ci95_low.zip(stats.ci95_high)
}

/// `interval` in pixels of `scale`.
pub fn whisker(stats: &Stats, scale: &Scale) -> Option<Whisker> {
    interval(stats).map(|(lo, hi)| Whisker { lo: scale.at(lo), hi: scale.at(hi) })
}

/// Every value a chart of `stats` draws: the median and, when there is one, both ends of the interval.
pub fn extent(stats: &Stats) -> impl Iterator<Item = f64> {
    let (lo, hi) = interval(stats).unwrap_or((stats.median, stats.median));
    [stats.median, lo, hi].into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_covers_the_interval_not_only_the_median() {
        let wide = Stats::of(&[100.0, 110.0, 400.0]);
        let s = Scale::from_zero(extent(&wide), 480.0);
        let w = whisker(&wide, &s).expect("3 samples have an interval");
        assert!(w.hi <= 480.0 + 1e-9 && w.hi > s.at(wide.median), "{w:?}");
        assert!((s.at(wide.ci95_high.expect("ci")) - 480.0).abs() < 1e-9);
        // One sample: no interval, no whisker; the scale still has a range.
        let one = Stats::of(&[5.0]);
        assert!(whisker(&one, &s).is_none());
        assert_eq!(Scale::from_zero([0.0], 100.0).at(0.0), 0.0);
    }

    #[test]
    fn numbers_keep_three_decimals_below_100() {
        assert_eq!((num(0.5512), num(123.4), num(-150.2)), ("0.551".into(), "123".into(), "-150".into()));
    }
}
