//! Minimum, median and percentiles of measurements.

/// Order statistics of a sample.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Smallest value.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
}

impl Summary {
    /// Sorts `values` and summarises them; all zero when empty.
    pub fn of(values: &mut [u64]) -> Summary {
        if values.is_empty() {
            return Summary {
                min: 0,
                p50: 0,
                p99: 0,
            };
        }
        values.sort_unstable();
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        Summary {
            min: values[0],
            p50: at(0.5),
            p99: at(0.99),
        }
    }
}

/// (min, median) of floating-point rounds.
pub fn min_median(values: &[f64]) -> (f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => (0.0, 0.0),
        n if n % 2 == 1 => (v[0], v[n / 2]),
        n => (v[0], (v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_sample() {
        let mut v: Vec<u64> = (1..=100).rev().collect();
        let s = Summary::of(&mut v);
        assert_eq!((s.min, s.p50, s.p99), (1, 51, 99));
        assert_eq!(min_median(&[3.0, 1.0, 2.0]), (1.0, 2.0));
        assert_eq!(min_median(&[4.0, 1.0, 2.0, 3.0]), (1.0, 2.5));
    }
}
