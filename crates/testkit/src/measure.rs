//! What the benchmark binaries measure with: CPU time from `/proc` and percentiles.

use std::time::Duration;

/// One clock tick of `/proc/*/stat` CPU times (`USER_HZ`, 100 on Linux).
const CLOCK_TICK: Duration = Duration::from_millis(10);

/// utime + stime of a `/proc/…/stat` file (`/proc/self/stat`, `/proc/{pid}/stat`,
/// `/proc/self/task/{tid}/stat`); `None` when it cannot be read, e.g. the process is gone.
pub fn cpu_time(path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may contain spaces; the fields after it are plain.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u32>().ok()? + fields.get(12)?.parse::<u32>().ok()?;
    Some(CLOCK_TICK * ticks)
}

/// The nearest-rank percentile of sorted `values` (`percent` 100 is the largest).
pub fn percentile(values: &[f64], percent: usize) -> f64 {
    let rank = (values.len() * percent).div_ceil(100).max(1);
    values[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_used_some_cpu_and_percentiles_are_nearest_rank() {
        assert!(cpu_time("/proc/self/stat").is_some());
        assert_eq!(cpu_time("/proc/self/nothing"), None);
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&values, 50), 5.0);
        assert_eq!(percentile(&values, 99), 10.0);
        assert_eq!(percentile(&values, 0), 1.0);
    }
}
