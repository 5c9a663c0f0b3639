//! Run statistics of a map ([`RunStats`]) and the resource probes behind them.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which strategy ran a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// In the calling thread.
    Linear,
    /// On the executor's thread pool.
    Threads,
    /// In worker processes.
    Processes,
}

impl Strategy {
    /// The lowercase name, as in [`Backend`](crate::Backend)'s `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Linear => "linear",
            Strategy::Threads => "threads",
            Strategy::Processes => "processes",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one map cost. Every executor fills every field; vectors are in task (input) order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunStats {
    /// The strategy that ran the map.
    pub strategy: Strategy,
    /// Workers (threads or processes) of the executor; 1 for linear.
    pub workers: usize,
    /// Inner threads each task was given.
    pub inner_threads: usize,
    /// Number of tasks.
    pub tasks: usize,
    /// Wall time of the whole map, from the call to the return.
    pub wall: Duration,
    /// Wall time of each task, measured where it ran (excludes queueing and transport).
    pub task_wall: Vec<Duration>,
    /// CPU time of each task: of the worker process that ran it (inner threads included) under
    /// `Processes`; of the thread that ran it under `Linear`/`Threads` (work handed to an inner
    /// pool is then counted only in [`cpu_total`](Self::cpu_total)).
    pub task_cpu: Vec<Duration>,
    /// Which worker ran each task.
    pub task_worker: Vec<usize>,
    /// User + system CPU time of the whole process tree during the map: this process (all its
    /// threads, including transport) plus, under `Processes`, the workers' CPU time for the tasks.
    pub cpu_total: Duration,
    /// Peak resident memory of the process tree.
    pub peak_rss: PeakRss,
}

impl RunStats {
    /// The cost of this map followed by `next` on the same executor, as if they were one map:
    /// counts, times and per-task vectors add up; peaks are the larger of the two (per worker).
    pub fn then(mut self, next: &RunStats) -> RunStats {
        self.tasks += next.tasks;
        self.wall += next.wall;
        self.task_wall.extend_from_slice(&next.task_wall);
        self.task_cpu.extend_from_slice(&next.task_cpu);
        self.task_worker.extend_from_slice(&next.task_worker);
        self.cpu_total += next.cpu_total;
        let (a, b) = (&self.peak_rss.workers_kib, &next.peak_rss.workers_kib);
        let workers: Vec<u64> =
            (0..a.len().max(b.len())).map(|i| a.get(i).copied().max(b.get(i).copied()).unwrap_or(0)).collect();
        self.peak_rss = PeakRss::new(self.peak_rss.parent_kib.max(next.peak_rss.parent_kib), workers);
        self
    }

    /// Mean of [`task_wall`](Self::task_wall) (zero for an empty map).
    pub fn mean_task_wall(&self) -> Duration {
        mean(&self.task_wall)
    }

    /// Sum of [`task_wall`](Self::task_wall).
    pub fn sum_task_wall(&self) -> Duration {
        self.task_wall.iter().sum()
    }
}

fn mean(d: &[Duration]) -> Duration {
    match u32::try_from(d.len()) {
        Ok(0) | Err(_) => Duration::ZERO,
        Ok(n) => d.iter().sum::<Duration>() / n,
    }
}

impl fmt::Display for RunStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tasks on {}×{} (inner {}): wall {:.3?}, mean task {:.3?}, cpu {:.3?}, peak rss {} KiB ({} parent + {} workers)",
            self.tasks,
            self.strategy,
            self.workers,
            self.inner_threads,
            self.wall,
            self.mean_task_wall(),
            self.cpu_total,
            self.peak_rss.total_kib,
            self.peak_rss.parent_kib,
            self.peak_rss.workers_sum_kib,
        )
    }
}

/// Peak resident set sizes (high-water marks since each process started), in KiB.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeakRss {
    /// This (the calling) process.
    pub parent_kib: u64,
    /// Each worker process, by worker index (empty unless `Processes`).
    pub workers_kib: Vec<u64>,
    /// Sum over the workers.
    pub workers_sum_kib: u64,
    /// Parent plus workers: an upper bound of the tree's simultaneous peak.
    pub total_kib: u64,
}

impl PeakRss {
    /// Builds the record from the parent's peak and the workers' peaks.
    pub fn new(parent_kib: u64, workers_kib: Vec<u64>) -> Self {
        let workers_sum_kib = workers_kib.iter().sum();
        Self { parent_kib, workers_kib, workers_sum_kib, total_kib: parent_kib + workers_sum_kib }
    }
}

/// Peak resident set size of this process since it started, in KiB: `VmHWM` of
/// `/proc/self/status` on Linux, `getrusage`'s `ru_maxrss` on other Unixes; 0 where unavailable.
pub fn peak_rss_kib() -> u64 {
    // Linux first: `VmHWM` starts afresh at `execve`, whereas `ru_maxrss` carries over the peak of
    // the process image that forked us — a worker started by a 2 GB parent would report 2 GB.
    #[cfg(target_os = "linux")]
    if let Some(kib) = proc_status_kib("VmHWM:") {
        return kib;
    }
    #[cfg(unix)]
    if let Some(r) = rusage_self() {
        let maxrss = u64::try_from(r.ru_maxrss).unwrap_or(0);
        // macOS reports bytes, the other Unixes KiB.
        return if cfg!(target_os = "macos") { maxrss / 1024 } else { maxrss };
    }
    0
}

#[cfg(target_os = "linux")]
fn proc_status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// User + system CPU time of this process (all threads) since it started (zero where
/// unsupported).
pub fn process_cpu_time() -> Duration {
    #[cfg(unix)]
    if let Some(r) = rusage_self() {
        return timeval(r.ru_utime) + timeval(r.ru_stime);
    }
    Duration::ZERO
}

/// CPU time of the calling thread since it started (zero where unsupported).
pub fn thread_cpu_time() -> Duration {
    #[cfg(unix)]
    {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        if rc == 0 {
            return Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0));
        }
    }
    Duration::ZERO
}

#[cfg(unix)]
fn rusage_self() -> Option<libc::rusage> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage writes a complete `rusage` through the pointer on success (rc == 0).
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    // SAFETY: initialised by the successful call above; not read otherwise.
    (rc == 0).then(|| unsafe { usage.assume_init() })
}

#[cfg(unix)]
fn timeval(tv: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(tv.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(tv.tv_usec).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_return_real_numbers() {
        assert!(peak_rss_kib() > 100, "a test binary uses more than 100 KiB");
        let t0 = thread_cpu_time();
        let c0 = process_cpu_time();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_time() > t0);
        assert!(process_cpu_time() > c0);
    }

    /// The peak is this process's own: `VmHWM` (reset at `execve`), not `ru_maxrss`, which a
    /// process started by a large parent (cargo here) inherits from it.
    #[cfg(target_os = "linux")]
    #[test]
    fn peak_is_the_vm_high_water_mark() {
        let hwm = proc_status_kib("VmHWM:").unwrap();
        let peak = peak_rss_kib();
        assert!(peak.abs_diff(hwm) <= hwm / 10 + 1024, "{peak} vs {hwm}");
    }

    #[test]
    fn consecutive_maps_add_up() {
        let ms = Duration::from_millis;
        let one = |tasks: usize, wall: u64, parent: u64, workers: Vec<u64>| RunStats {
            strategy: Strategy::Processes,
            workers: 2,
            inner_threads: 1,
            tasks,
            wall: ms(wall),
            task_wall: vec![ms(1); tasks],
            task_cpu: vec![ms(2); tasks],
            task_worker: (0..tasks).map(|i| i % 2).collect(),
            cpu_total: ms(3 * tasks as u64),
            peak_rss: PeakRss::new(parent, workers),
        };
        let both = one(3, 10, 100, vec![5, 9]).then(&one(2, 7, 80, vec![8, 1]));
        assert_eq!((both.tasks, both.wall, both.cpu_total), (5, ms(17), ms(15)));
        assert_eq!(both.task_wall.len(), 5);
        assert_eq!(both.task_worker, vec![0, 1, 0, 0, 1]);
        assert_eq!(both.peak_rss, PeakRss::new(100, vec![8, 9]));
    }

    #[test]
    fn peak_rss_sums() {
        let p = PeakRss::new(10, vec![3, 4]);
        assert_eq!((p.workers_sum_kib, p.total_kib), (7, 17));
    }
}
