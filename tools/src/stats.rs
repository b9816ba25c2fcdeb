//! Summaries of repeated measurements: median, quartiles and range, and ratios taken
//! per repetition pair.
//!
//! Under emulation one run per configuration is not a measurement: the host's other
//! load moves a run by tens of percent. `homi bench` therefore repeats each
//! configuration, interleaving the paths it compares, and reports what these
//! functions compute.

use serde::{Deserialize, Serialize};

/// The distribution of one metric over repetitions.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// How many values.
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// First and third quartiles (linear interpolation between order statistics,
    /// numpy's default).
    pub q1: f64,
    pub q3: f64,
}

/// The `q`-quantile (0..=1) of sorted values, interpolating linearly between the two
/// nearest order statistics.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Summarizes `values`; `None` when there are none or one is not a number.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    Some(Summary {
        n: v.len(),
        median: quantile(&v, 0.5),
        min: v[0],
        max: v[v.len() - 1],
        q1: quantile(&v, 0.25),
        q3: quantile(&v, 0.75),
    })
}

/// `a[i] / b[i]` for each repetition `i`: each ratio compares two runs made back to
/// back, so slow drifts of the host cancel out of it, which they do not out of a ratio
/// of medians. `None` unless both have the same number of values.
pub fn pair_ratios(a: &[f64], b: &[f64]) -> Option<Vec<f64>> {
    (a.len() == b.len()).then(|| a.iter().zip(b).map(|(x, y)| x / y).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_count_median_is_the_middle_value() {
        let s = summarize(&[5.0, 1.0, 3.0, 9.0, 7.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (5, 5.0, 1.0, 9.0));
        assert_eq!((s.q1, s.q3), (3.0, 7.0));
    }

    #[test]
    fn even_count_median_interpolates() {
        let s = summarize(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert_eq!((s.q1, s.q3), (1.75, 3.25));
        assert_eq!((s.min, s.max), (1.0, 4.0));
    }

    #[test]
    fn one_value_has_no_spread() {
        let s = summarize(&[42.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.q1, s.q3), (42.0, 42.0, 42.0, 42.0, 42.0));
    }

    #[test]
    fn nothing_or_nan_gives_no_summary() {
        assert!(summarize(&[]).is_none());
        assert!(summarize(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn an_outlier_moves_the_range_but_not_the_median() {
        let s = summarize(&[10.0, 11.0, 12.0, 10.5, 1000.0]).unwrap();
        assert_eq!(s.median, 11.0);
        assert_eq!(s.max, 1000.0);
        assert!(s.q3 < 13.0);
    }

    #[test]
    fn ratios_pair_runs_by_repetition() {
        // The host slows down between repetitions; both paths slow down with it.
        let homi = [200.0, 100.0, 50.0];
        let uring = [100.0, 50.0, 25.0];
        let r = pair_ratios(&homi, &uring).unwrap();
        assert_eq!(r, vec![2.0, 2.0, 2.0]);
        let s = summarize(&r).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 2.0, 2.0));
        // A ratio of medians would not pair them: a swapped order shows that.
        let r = pair_ratios(&[200.0, 50.0], &[50.0, 200.0]).unwrap();
        assert_eq!(r, vec![4.0, 0.25]);
    }

    #[test]
    fn ratios_need_the_same_repetitions() {
        assert!(pair_ratios(&[1.0, 2.0], &[1.0]).is_none());
    }
}
