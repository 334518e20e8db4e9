//! What the benchmark binaries measure and report with: CPU time, memory and load from `/proc`,
//! percentiles and medians, and the number formats of their Markdown tables.
//!
//! Every bench takes these from here, so that two reports computing "p99" or "CPU time" mean
//! the same thing.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// One clock tick of `/proc/*/stat` CPU times (`USER_HZ`, 100 on Linux).
const CLOCK_TICK: Duration = Duration::from_millis(10);

/// utime + stime of a `/proc/…/stat` file (`/proc/self/stat`, `/proc/{pid}/stat`,
/// `/proc/self/task/{tid}/stat`); `None` when it cannot be read, e.g. the process is gone.
pub fn cpu_time(path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the fields after its
    // last `)` are plain.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u32>().ok()? + fields.get(12)?.parse::<u32>().ok()?;
    Some(CLOCK_TICK * ticks)
}

/// CPU time (user + system) of process `pid` so far, all its threads together; `None` when it
/// is gone.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    cpu_time(&format!("/proc/{pid}/stat"))
}

/// Time on a CPU of the thread or process at `/proc/…` path `task` (`/proc/{pid}`,
/// `/proc/self/task/{tid}`): from its `schedstat` (nanoseconds) where the kernel keeps one, else
/// from `stat` (10 ms ticks); `None` when it is gone.
pub fn on_cpu(task: &str) -> Option<Duration> {
    let nanos = std::fs::read_to_string(format!("{task}/schedstat"))
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u64>().ok());
    match nanos {
        Some(nanos) => Some(Duration::from_nanos(nanos)),
        None => cpu_time(&format!("{task}/stat")),
    }
}

/// The CPU time of the PostgreSQL server processes a benchmark follows: those whose `pid`s
/// `select` answers from `pg_stat_activity` (with `parameter` as `$1`, e.g. an
/// `application_name`). Backends come and go, so they are sampled every `interval`: one that
/// ends between samples loses at most that much, one that started later counts all its time.
pub struct BackendsCpu {
    pool: PgPool,
    select: &'static str,
    parameter: &'static str,
    interval: Duration,
    start: HashMap<u32, Duration>,
}

impl BackendsCpu {
    pub async fn start(
        pool: &PgPool,
        select: &'static str,
        parameter: &'static str,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let mut backends = Self {
            pool: pool.clone(),
            select,
            parameter,
            interval,
            start: HashMap::new(),
        };
        backends.start = backends.sample().await?;
        Ok(backends)
    }

    async fn sample(&self) -> anyhow::Result<HashMap<u32, Duration>> {
        let pids: Vec<i32> = sqlx::query_scalar(self.select)
            .bind(self.parameter)
            .fetch_all(&self.pool)
            .await?;
        Ok(pids
            .into_iter()
            .filter_map(|pid| Some((pid as u32, on_cpu(&format!("/proc/{pid}"))?)))
            .collect())
    }

    /// Follows the processes until `stop` fires; returns the CPU time they used since the start.
    pub async fn follow(self, stop: CancellationToken) -> anyhow::Result<Duration> {
        let mut latest = self.start.clone();
        loop {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(self.interval) => {}
            }
            latest.extend(self.sample().await?);
            if stop.is_cancelled() {
                break;
            }
        }
        Ok(latest
            .iter()
            .map(|(pid, time)| {
                time.saturating_sub(self.start.get(pid).copied().unwrap_or_default())
            })
            .sum())
    }
}

/// CPU time of this process so far, including threads that have ended.
pub fn this_process_cpu() -> Option<Duration> {
    cpu_time("/proc/self/stat")
}

/// CPU time of the calling thread so far: what work confined to one thread costs, whatever
/// the rest of the process does meanwhile.
pub fn this_thread_cpu() -> Option<Duration> {
    cpu_time("/proc/thread-self/stat")
}

/// The nearest-rank percentile of sorted `values`: the smallest value that at least `percent`
/// percent of them do not exceed (`percent` 100 is the largest, 0 the smallest). Always one of
/// the values, never an interpolation. Panics when `values` is empty.
pub fn percentile<T: Copy>(values: &[T], percent: usize) -> T {
    let rank = (values.len() * percent)
        .div_ceil(100)
        .clamp(1, values.len());
    values[rank - 1]
}

/// The median of `values` (in any order): the middle one, or the mean of the middle two.
/// Panics when `values` is empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

/// A 95 % interval for the median of `values`, one per round of a bench (the rounds' paired
/// results): a percentile bootstrap, resampling the rounds with replacement 2,000 times with a
/// fixed seed, so the same values always give the same interval. Rounds next to each other
/// share the machine's drift, so the interval is, if anything, too narrow.
pub fn median_interval(values: &[f64]) -> (f64, f64) {
    const RESAMPLES: usize = 2_000;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut medians: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let sample = (0..values.len())
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    values[(state >> 33) as usize % values.len()]
                })
                .collect();
            median(sample)
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    (
        medians[RESAMPLES / 40],
        medians[RESAMPLES - 1 - RESAMPLES / 40],
    )
}

/// Resident memory of this process, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Now (`VmRSS`).
    pub resident: u64,
    /// The most it has been so far (`VmHWM`).
    pub peak: u64,
}

/// This process's resident memory, from `/proc/self/status`.
pub fn memory() -> io::Result<Memory> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> io::Result<u64> {
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("no {name} in /proc/self/status"),
                )
            })?;
        Ok(kib * 1024)
    };
    Ok(Memory {
        resident: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// The machine's load average over 1, 5 and 15 minutes as `/proc/loadavg` gives it
/// (`"0.52 0.61 0.70"`): how busy the machine was besides what a bench measures.
pub fn load_average() -> io::Result<String> {
    let text = std::fs::read_to_string("/proc/loadavg")?;
    Ok(text
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" "))
}

/// `value` with commas between groups of three digits: `1,234,567`.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// `bytes` in whole mebibytes: `12 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_this_thread_have_used_cpu_time() {
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {}
        let thread = this_thread_cpu().unwrap();
        assert!(thread > Duration::ZERO);
        // The process's time includes this thread's, read before it.
        assert!(this_process_cpu().unwrap() >= thread);
        assert!(process_cpu(std::process::id()).is_some());
        assert!(on_cpu("/proc/thread-self").unwrap() > Duration::ZERO);
    }

    #[test]
    fn a_process_that_is_gone_has_no_cpu_time() {
        assert_eq!(on_cpu("/proc/4294967295"), None);
        assert_eq!(cpu_time("/proc/self/nothing"), None);
        // Above the kernel's largest pid (2^22).
        assert_eq!(process_cpu(u32::MAX), None);
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let file = tempfile::NamedTempFile::new().unwrap();
        // utime 250 and stime 50 ticks are fields 14 and 15.
        std::fs::write(
            file.path(),
            "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0\n",
        )
        .unwrap();
        let path = file.path().to_str().unwrap();
        assert_eq!(cpu_time(path), Some(Duration::from_secs(3)));
    }

    #[test]
    fn percentiles_are_nearest_rank_for_numbers_and_durations() {
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&values, 50), 5.0);
        assert_eq!(percentile(&values, 51), 6.0);
        assert_eq!(percentile(&values, 99), 10.0);
        assert_eq!(percentile(&values, 100), 10.0);
        assert_eq!(percentile(&values, 0), 1.0);
        let durations: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        assert_eq!(percentile(&durations, 50), Duration::from_millis(100));
        assert_eq!(percentile(&durations, 99), Duration::from_millis(198));
        assert_eq!(percentile(&[Duration::ZERO], 99), Duration::ZERO);
    }

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
    }

    #[test]
    fn the_median_interval_holds_the_median_and_is_the_same_every_time() {
        let values = [1.02, 0.97, 1.01, 0.99, 1.05, 0.98, 1.00, 1.03, 0.96, 1.04];
        let (low, high) = median_interval(&values);
        let middle = median(values.to_vec());
        assert!(low <= middle && middle <= high, "{low} {middle} {high}");
        assert!(0.96 <= low && high <= 1.05);
        assert_eq!(median_interval(&values), (low, high));
        assert_eq!(median_interval(&[2.0; 5]), (2.0, 2.0));
    }

    #[test]
    fn memory_and_load_average_are_read_from_proc() {
        let memory = memory().unwrap();
        assert!(memory.resident > 0 && memory.peak >= memory.resident);
        let load = load_average().unwrap();
        assert_eq!(load.split(' ').count(), 3, "{load}");
        assert!(load.split(' ').all(|value| value.parse::<f64>().is_ok()));
    }

    #[test]
    fn thousands_are_separated_by_commas() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn bytes_are_shown_in_whole_mebibytes() {
        assert_eq!(mib(0), "0 MiB");
        assert_eq!(mib(3 * 1024 * 1024 + 400 * 1024), "3 MiB");
        assert_eq!(mib(1792 * 1024), "2 MiB");
    }
}
