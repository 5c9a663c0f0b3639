//! `cargo xtask perf-sweep`: runs every point of a grid in fresh `caiman-bench-point` processes
//! (warm-up runs, then measured repeats), aggregates median and minimum, picks a recommended
//! configuration and writes the outputs (see [`crate::report`]).
//!
//! What it is not: a benchmark harness for kernels (criterion benches in caiman-bench are), and it
//! never judges a run by wall time alone: settings that change results (patch and chunk sizes) are
//! compared on accuracy first.
// xtask is a developer tool that drives cargo, rustc, git and the point binary: starting
// processes is its job, so the workspace rule that only caiman-parallel starts them does not apply.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::grid::{self, Grid, PointSpec, Refusal};

/// The `--quick` grid (also `docs/perf/grids/quick.toml`).
pub const QUICK_GRID: &str = include_str!("../../docs/perf/grids/quick.toml");
/// The grid used without `--grid` or `--quick` (also `docs/perf/grids/default.toml`).
pub const DEFAULT_GRID: &str = include_str!("../../docs/perf/grids/default.toml");

/// What the command line asked for.
#[derive(Clone, Debug, Default)]
pub struct SweepOptions {
    /// A grid file (else the built-in default or quick grid).
    pub grid: Option<PathBuf>,
    /// Use the quick grid.
    pub quick: bool,
    /// A movie file (overrides the grid's `movie`).
    pub movie: Option<PathBuf>,
    /// A synthetic size `D1xD2xT` (overrides the grid's `movie`).
    pub synthetic: Option<String>,
    /// Only these stages.
    pub stages: Option<Vec<String>>,
    /// Memory budget (overrides the grid's).
    pub memory_budget: Option<String>,
    /// Measured runs per point (overrides the grid's).
    pub repeats: Option<usize>,
    /// Warm-up runs per point (overrides the grid's).
    pub warmup: Option<usize>,
    /// Output directory.
    pub out: PathBuf,
    /// The point binary to use instead of building it.
    pub point_bin: Option<PathBuf>,
    /// Where synthetic movies are cached (default `<workspace>/target/perf-sweep-cache`).
    pub cache_dir: Option<PathBuf>,
    /// Where points write their intermediate files (default: the cache directory).
    pub scratch_dir: Option<PathBuf>,
    /// Only list the points and refusals.
    pub dry_run: bool,
    /// The workspace root.
    pub workspace: PathBuf,
}

/// One measured run, as the point binary printed it (the fields the sweep uses; the rest is kept).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Run {
    /// Wall seconds.
    pub wall_s: f64,
    /// CPU seconds of the process tree.
    pub cpu_s: f64,
    /// Peak RSS of the process tree, KiB.
    pub peak_rss_kib: u64,
    /// This process's peak, KiB.
    pub parent_peak_rss_kib: u64,
    /// Workers' peaks, KiB.
    pub workers_peak_rss_kib: u64,
    /// Frames per second.
    pub frames_per_s: f64,
    /// Scratch bytes.
    pub scratch_bytes: u64,
    /// Inner threads the executor resolved.
    pub inner_threads: usize,
    /// Workers.
    pub workers: usize,
    /// Accuracy figures (`shift_rms_px`, `f1`, …).
    pub accuracy: BTreeMap<String, Option<f64>>,
    /// Effective parameters.
    pub params: Value,
    /// Everything else.
    #[serde(flatten)]
    pub rest: BTreeMap<String, Value>,
}

/// A point with its runs and their summary.
#[derive(Clone, Debug, Serialize)]
pub struct PointOutcome {
    /// The `[[sweep]]` block that produced it.
    pub block: String,
    /// The point.
    pub spec: PointSpec,
    /// Short id.
    pub id: String,
    /// Measured runs.
    pub runs: Vec<Run>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Median wall seconds.
    pub wall_median_s: f64,
    /// Minimum wall seconds.
    pub wall_min_s: f64,
    /// Median CPU seconds.
    pub cpu_median_s: f64,
    /// Median peak RSS of the tree, KiB.
    pub peak_rss_median_kib: u64,
    /// Largest peak RSS of the tree, KiB.
    pub peak_rss_max_kib: u64,
    /// Median peak RSS of the sweep's own process (the parent), KiB.
    pub parent_peak_median_kib: u64,
    /// Median of the summed worker peaks, KiB.
    pub workers_peak_median_kib: u64,
    /// Median frames/s.
    pub fps_median: f64,
    /// Scratch bytes (largest).
    pub scratch_bytes: u64,
    /// Median of each accuracy figure.
    pub accuracy: BTreeMap<String, f64>,
    /// Whether the median peak fits the budget.
    pub within_budget: bool,
    /// Whether its accuracy is within tolerance of the best of its stage (`None`: no truth).
    pub accurate: Option<bool>,
}

impl PointOutcome {
    /// Whether at least one run succeeded.
    pub fn ok(&self) -> bool {
        self.error.is_none() && !self.runs.is_empty()
    }
}

/// The machine and the code the sweep ran on.
#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    /// Host name.
    pub host: String,
    /// Cores available.
    pub cores: usize,
    /// CPU model.
    pub cpu: String,
    /// Total memory, bytes.
    pub memory_bytes: u64,
    /// `rustc -V`.
    pub rustc: String,
    /// `git rev-parse HEAD` (`+dirty` with uncommitted changes).
    pub git_rev: String,
    /// UTC start time.
    pub started_utc: String,
    /// Seconds the sweep took (build and movie preparation included).
    pub duration_s: f64,
    /// Seconds spent running the points.
    pub points_s: f64,
    /// Load average (1, 5, 15 min) at start and at the end.
    pub load_start: String,
    /// See `load_start`.
    pub load_end: String,
    /// The command line.
    pub command: String,
    /// The grid's origin (file or built-in).
    pub grid: String,
    /// The movie (`synthetic:…` or a path) and its shape.
    pub movie: String,
    /// `[d1, d2, d3]`.
    pub dims: [usize; 3],
    /// Frames.
    pub frames: usize,
    /// Memory budget, bytes.
    pub memory_budget: u64,
    /// Thread limit.
    pub max_threads: usize,
    /// Warm-up runs per point.
    pub warmup: usize,
    /// Measured runs per point.
    pub repeats: usize,
    /// Tolerances used for "without losing accuracy".
    pub tolerances: Value,
}

/// The recommended configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Recommendation {
    /// `--backend` value.
    pub backend: String,
    /// Thread variables to set.
    pub env: BTreeMap<String, String>,
    /// Chosen point id per stage.
    pub per_stage: BTreeMap<String, String>,
    /// The params JSON to pass with `--params`.
    pub params: Value,
    /// Why, in sentences.
    pub reasons: Vec<String>,
}

/// Everything a sweep produced.
#[derive(Clone, Debug, Serialize)]
pub struct SweepOutcome {
    /// Machine and code.
    pub meta: Meta,
    /// Points, in grid order.
    pub points: Vec<PointOutcome>,
    /// Points not run, and why.
    pub refused: Vec<Refusal>,
    /// The recommendation (`None` when nothing qualified).
    pub recommendation: Option<Recommendation>,
}

/// Reads the grid named by the options (or a built-in one) and applies the command-line overrides.
///
/// # Errors
/// Unreadable or invalid grids, conflicting options.
pub fn load_grid(opts: &SweepOptions) -> Result<(Grid, String)> {
    let (text, origin) = match (&opts.grid, opts.quick) {
        (Some(_), true) => bail!("--grid and --quick exclude each other (--quick selects the built-in quick grid)"),
        (Some(p), false) => {
            (std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?, p.display().to_string())
        }
        (None, true) => (QUICK_GRID.to_owned(), "built-in quick grid (docs/perf/grids/quick.toml)".to_owned()),
        (None, false) => (DEFAULT_GRID.to_owned(), "built-in default grid (docs/perf/grids/default.toml)".to_owned()),
    };
    let mut g = Grid::parse(&text, &origin)?;
    // A relative `params` path in a grid file is relative to the grid file.
    if let (Some(grid), Some(p)) = (&opts.grid, &g.params)
        && p.is_relative()
    {
        g.params = Some(grid.parent().unwrap_or(Path::new(".")).join(p));
    }
    match (&opts.movie, &opts.synthetic) {
        (Some(_), Some(_)) => bail!("--movie and --synthetic exclude each other"),
        (Some(m), None) => g.movie = Some(m.display().to_string()),
        (None, Some(s)) => g.movie = Some(format!("synthetic:{s}")),
        (None, None) => {}
    }
    if let Some(b) = &opts.memory_budget {
        g.memory_budget = Some(b.clone());
    }
    if let Some(r) = opts.repeats {
        if r == 0 {
            bail!("--repeats must be at least 1");
        }
        g.repeats = r;
    }
    if let Some(w) = opts.warmup {
        g.warmup = w;
    }
    Ok((g, origin))
}

/// The `input` JSON of the point binary for the grid's movie.
fn input_json(g: &Grid) -> Result<Value> {
    let movie = g.movie.clone().unwrap_or_else(|| "synthetic:256x256x1000".into());
    if let Some(size) = movie.strip_prefix("synthetic:") {
        let parts: Vec<usize> = size.split(['x', 'X']).filter_map(|p| p.trim().parse().ok()).collect();
        let [d1, d2, frames] = parts[..] else { bail!("movie {movie:?}: expected synthetic:D1xD2xT") };
        return Ok(json!({"kind": "synthetic", "d1": d1, "d2": d2, "frames": frames, "seed": g.seed}));
    }
    let p = std::fs::canonicalize(&movie).with_context(|| format!("movie {movie}"))?;
    Ok(json!({"kind": "file", "path": p}))
}

/// Builds `caiman-bench-point` in release mode and returns its path.
///
/// # Errors
/// A failed build.
pub fn build_point_binary(workspace: &Path, log: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    log("building caiman-bench-point (release) …");
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--release", "-p", "caiman-bench", "--bin", "caiman-bench-point", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build --release -p caiman-bench --bin caiman-bench-point failed ({})", out.status);
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Ok(v) = serde_json::from_str::<Value>(line)
            && v["reason"] == "compiler-artifact"
            && v["target"]["name"] == "caiman-bench-point"
            && let Some(exe) = v["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo build did not report the caiman-bench-point executable")
}

/// Runs the point binary once with `args` and `env`, killing it after `timeout`. Returns stdout.
fn run_bin(bin: &Path, args: &[String], env: &BTreeMap<String, String>, timeout: Duration) -> Result<String> {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // Each run sees exactly the thread variables of its point, not the caller's.
    for v in grid::THREAD_VARS {
        cmd.env_remove(v);
    }
    cmd.envs(env);
    let mut child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("killed after the {} s timeout", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut stdout)?;
    }
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut stderr)?;
    }
    if !status.success() {
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        bail!("{last} ({status})");
    }
    Ok(stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).unwrap_or("").to_owned())
}

/// The point binary's config JSON for `p`.
fn point_config(p: &PointSpec, input: &Value, cache: &Path, scratch: &Path, params: Option<&Path>) -> Value {
    let backend = match p.strategy.as_str() {
        "linear" => json!({"kind": "linear"}),
        k => json!({"kind": k, "workers": p.workers}),
    };
    let mut backend = backend;
    if let Some(n) = p.inner.explicit() {
        backend["inner_threads"] = json!(n);
    }
    let mut motion = json!({});
    if let Some(n) = p.num_frames_split {
        motion["num_frames_split"] = json!(n);
    }
    if let Some(m) = p.motion_patch {
        motion["strides"] = json!(m.strides);
        motion["overlaps"] = json!(m.overlaps);
        if p.stage == "pipeline" {
            // A motion patch on a pipeline point means piecewise rigid with it.
            motion["pw_rigid"] = json!(true);
        }
    }
    let mut cnmf = json!({});
    if let Some(c) = p.cnmf_patch {
        cnmf["rf"] = json!(c.rf);
        if let Some(s) = c.stride {
            cnmf["stride"] = json!(s);
        }
        if let Some(k) = c.k {
            cnmf["k"] = json!(k);
        }
    }
    let mut v = json!({
        "stage": p.stage, "input": input, "cache_dir": cache, "scratch_dir": scratch,
        "backend": backend, "motion": motion, "cnmf": cnmf,
    });
    if let Some(pp) = params {
        v["params"] = json!(pp);
    }
    v
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// Machine facts from /proc and the tools.
fn read_meta_basics() -> (String, String, u64) {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into()));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned()))
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |k| k * 1024);
    (host, cpu, mem)
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn tool_output(cmd: &str, args: &[&str], dir: &Path) -> Option<String> {
    let out = Command::new(cmd).args(args).current_dir(dir).stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (civil-from-days, proleptic Gregorian).
pub fn utc_string(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// The cores the sweep plans with.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs the sweep and writes its outputs into `opts.out`. `log` hears progress lines.
///
/// # Errors
/// Invalid grids and options, a failed build, a movie that cannot be prepared, unwritable outputs.
/// Failed points do not fail the sweep: they are reported.
pub fn run(opts: &SweepOptions, log: &mut dyn FnMut(&str)) -> Result<SweepOutcome> {
    let t_start = Instant::now();
    let started_utc =
        utc_string(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    let load_start = load_avg();
    let (g, origin) = load_grid(opts)?;
    let cores = cores();
    let points = grid::expand(&g, cores, opts.stages.as_deref())?;
    let (host, cpu, mem_total) = read_meta_basics();
    let budget = match &g.memory_budget {
        Some(b) => grid::parse_bytes(b).context("memory budget")?,
        None => mem_total.max(1 << 30),
    };
    let max_threads = g.max_threads.unwrap_or(2 * cores);
    let input = input_json(&g)?;
    let cache = opts.cache_dir.clone().unwrap_or_else(|| opts.workspace.join("target").join("perf-sweep-cache"));
    let scratch = opts.scratch_dir.clone().unwrap_or_else(|| cache.clone());
    let params = g
        .params
        .as_ref()
        .map(|p| std::fs::canonicalize(p).with_context(|| format!("params {}", p.display())))
        .transpose()?;
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    std::fs::create_dir_all(&opts.out).with_context(|| format!("creating {}", opts.out.display()))?;

    let bin = match &opts.point_bin {
        Some(b) => b.clone(),
        None => build_point_binary(&opts.workspace, log)?,
    };
    // The binary's own stage list has the last word on what can run.
    let stages_line = run_bin(&bin, &["stages".into()], &BTreeMap::new(), Duration::from_secs(60))?;
    let available: BTreeMap<String, Option<String>> =
        serde_json::from_str(&stages_line).with_context(|| format!("{} stages: {stages_line:?}", bin.display()))?;
    for (_, p) in &points {
        match available.get(&p.stage) {
            Some(None) => {}
            Some(Some(why)) => bail!("stage `{}` is not available in {}: {why}", p.stage, bin.display()),
            None => bail!("stage `{}` is unknown to {}", p.stage, bin.display()),
        }
    }
    log(&format!(
        "preparing the movie {} (cached in {}) …",
        g.movie.as_deref().unwrap_or("synthetic:256x256x1000"),
        cache.display()
    ));
    let prep_line = run_bin(
        &bin,
        &["prepare".into(), input.to_string(), cache.display().to_string()],
        &BTreeMap::new(),
        Duration::from_secs(g.timeout_s),
    )
    .context("preparing the movie")?;
    let prepared: Value = serde_json::from_str(&prep_line).context("prepare output")?;
    let dims: [usize; 3] = serde_json::from_value(prepared["dims"].clone()).context("prepare output: dims")?;
    let frames = prepared["frames"].as_u64().unwrap_or(0) as usize;
    let default_chunk = 80;

    let mut refused = Vec::new();
    let mut todo = Vec::new();
    for (block, p) in points {
        match grid::refusal(&p, cores, max_threads, budget, dims, frames, default_chunk) {
            Some(why) => refused.push(Refusal { point: p.id(), why }),
            None => todo.push((block, p)),
        }
    }
    for r in &refused {
        log(&format!("refused: {}: {}", r.point, r.why));
    }
    let runs_per_point = g.warmup + g.repeats;
    log(&format!(
        "{} points × ({} warm-up + {} measured) = {} runs on {}×{}×{} frames; {} refused",
        todo.len(),
        g.warmup,
        g.repeats,
        todo.len() * runs_per_point,
        dims[0],
        dims[1],
        frames,
        refused.len()
    ));
    let movie_label = format!(
        "{} ({}×{}×{} frames)",
        g.movie.as_deref().unwrap_or("synthetic:256x256x1000"),
        dims[0],
        dims[1],
        frames
    );
    let mut meta = Meta {
        host,
        cores,
        cpu,
        memory_bytes: mem_total,
        rustc: tool_output(&std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()), &["-V"], &opts.workspace)
            .unwrap_or_else(|| "unknown".into()),
        git_rev: {
            let rev = tool_output("git", &["rev-parse", "HEAD"], &opts.workspace).unwrap_or_else(|| "unknown".into());
            let dirty = tool_output("git", &["status", "--porcelain", "--untracked-files=no"], &opts.workspace)
                .is_some_and(|s| !s.is_empty());
            if dirty { format!("{rev}+dirty") } else { rev }
        },
        started_utc,
        duration_s: 0.0,
        points_s: 0.0,
        load_start,
        load_end: String::new(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        grid: origin,
        movie: movie_label,
        dims,
        frames,
        memory_budget: budget,
        max_threads,
        warmup: g.warmup,
        repeats: g.repeats,
        tolerances: json!({"f1": g.f1_tolerance, "trace_corr": g.trace_corr_tolerance, "shift_px": g.shift_tolerance_px}),
    };
    if opts.dry_run {
        for (block, p) in &todo {
            log(&format!("[{block}] {}", p.id()));
        }
        meta.duration_s = t_start.elapsed().as_secs_f64();
        return Ok(SweepOutcome { meta, points: Vec::new(), refused, recommendation: None });
    }

    let timeout = Duration::from_secs(g.timeout_s);
    let t_points = Instant::now();
    let mut outcomes = Vec::new();
    let total = todo.len();
    for (i, (block, p)) in todo.into_iter().enumerate() {
        let cfg = point_config(&p, &input, &cache, &scratch, params.as_deref()).to_string();
        let mut runs = Vec::new();
        let mut error = None;
        for r in 0..runs_per_point {
            match run_bin(&bin, &["run".into(), cfg.clone()], &p.env, timeout)
                .and_then(|line| serde_json::from_str::<Run>(&line).with_context(|| format!("point output {line:?}")))
            {
                Ok(run) if r >= g.warmup => runs.push(run),
                Ok(_) => {}
                Err(e) => {
                    error = Some(format!("{e:#}"));
                    break;
                }
            }
        }
        let o = summarise(block, p, runs, error, budget);
        let eta = t_points.elapsed().as_secs_f64() / (i + 1) as f64 * (total - i - 1) as f64;
        log(&match &o.error {
            None => format!(
                "[{}/{total}] {}: median {:.2} s (min {:.2}), cpu {:.2} s, peak {:.0} MiB{} — about {:.0} s left",
                i + 1,
                o.id,
                o.wall_median_s,
                o.wall_min_s,
                o.cpu_median_s,
                o.peak_rss_median_kib as f64 / 1024.0,
                accuracy_label(&o.accuracy).map(|a| format!(", {a}")).unwrap_or_default(),
                eta
            ),
            Some(e) => format!("[{}/{total}] {}: FAILED: {e}", i + 1, o.id),
        });
        outcomes.push(o);
    }
    judge_accuracy(&mut outcomes, &g);
    let recommendation = recommend(&outcomes, &g);
    meta.load_end = load_avg();
    meta.points_s = t_points.elapsed().as_secs_f64();
    meta.duration_s = t_start.elapsed().as_secs_f64();
    let outcome = SweepOutcome { meta, points: outcomes, refused, recommendation };
    crate::report::write_all(&opts.out, &outcome)?;
    Ok(outcome)
}

/// `F1 0.91, trace r 0.98`, `shift RMS 0.12 px`, or both (`pipeline`).
pub fn accuracy_label(acc: &BTreeMap<String, f64>) -> Option<String> {
    let shift = acc.get("shift_rms_px").map(|s| format!("shift RMS {s:.3} px"));
    let cnmf = acc.get("f1").map(|f1| {
        let mut s = format!("F1 {f1:.3}");
        if let Some(c) = acc.get("median_trace_corr") {
            s.push_str(&format!(", trace r {c:.3}"));
        }
        s
    });
    match (shift, cnmf) {
        (Some(s), Some(c)) => Some(format!("{c}; {s}")),
        (s, c) => s.or(c),
    }
}

fn summarise(block: String, spec: PointSpec, runs: Vec<Run>, error: Option<String>, budget: u64) -> PointOutcome {
    let col = |f: &dyn Fn(&Run) -> f64| -> Vec<f64> { runs.iter().map(f).collect() };
    let wall = col(&|r| r.wall_s);
    let mut accuracy = BTreeMap::new();
    let keys: Vec<String> = runs.iter().flat_map(|r| r.accuracy.keys().cloned()).collect();
    for k in keys {
        let mut v: Vec<f64> = runs.iter().filter_map(|r| r.accuracy.get(&k).copied().flatten()).collect();
        if !v.is_empty() {
            accuracy.insert(k, median(&mut v));
        }
    }
    let peak_median = median(&mut col(&|r| r.peak_rss_kib as f64));
    let error = error.or_else(|| runs.is_empty().then(|| "no measured run".to_owned()));
    PointOutcome {
        block,
        id: spec.id(),
        spec,
        wall_median_s: median(&mut wall.clone()),
        wall_min_s: wall.iter().copied().fold(f64::INFINITY, f64::min),
        cpu_median_s: median(&mut col(&|r| r.cpu_s)),
        peak_rss_median_kib: if peak_median.is_finite() { peak_median as u64 } else { 0 },
        peak_rss_max_kib: runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0),
        parent_peak_median_kib: median(&mut col(&|r| r.parent_peak_rss_kib as f64)).max(0.0) as u64,
        workers_peak_median_kib: median(&mut col(&|r| r.workers_peak_rss_kib as f64)).max(0.0) as u64,
        fps_median: median(&mut col(&|r| r.frames_per_s)),
        scratch_bytes: runs.iter().map(|r| r.scratch_bytes).max().unwrap_or(0),
        accuracy,
        within_budget: peak_median.is_finite() && (peak_median * 1024.0) as u64 <= budget,
        accurate: None,
        runs,
        error,
    }
}

/// Marks each point accurate or not against the best of its stage: CNMF by F1 (higher is better)
/// and median trace correlation, motion by shift RMS error (lower is better); a point scored on
/// both (`pipeline`) must pass both.
fn judge_accuracy(points: &mut [PointOutcome], g: &Grid) {
    let stages: Vec<String> = points.iter().map(|p| p.spec.stage.clone()).collect();
    for stage in stages {
        let ok: Vec<usize> = (0..points.len()).filter(|&i| points[i].spec.stage == stage && points[i].ok()).collect();
        let best = |key: &str, higher: bool| -> Option<f64> {
            let v = ok.iter().filter_map(|&i| points[i].accuracy.get(key).copied());
            if higher { v.reduce(f64::max) } else { v.reduce(f64::min) }
        };
        let (best_f1, best_corr, best_shift) =
            (best("f1", true), best("median_trace_corr", true), best("shift_rms_px", false));
        for &i in &ok {
            let a = &points[i].accuracy;
            let shift_ok = match (best_shift, a.get("shift_rms_px")) {
                (Some(b), Some(v)) => Some(*v <= b + g.shift_tolerance_px),
                _ => None,
            };
            let cnmf_ok = match (best_f1, a.get("f1")) {
                (Some(b), Some(v)) => {
                    let corr_ok = match (best_corr, a.get("median_trace_corr")) {
                        (Some(bc), Some(c)) => *c >= bc - g.trace_corr_tolerance,
                        _ => true,
                    };
                    Some(*v >= b - g.f1_tolerance && corr_ok)
                }
                _ => None,
            };
            points[i].accurate = match (shift_ok, cnmf_ok) {
                (Some(s), Some(c)) => Some(s && c),
                (s, c) => s.or(c),
            };
        }
    }
}

/// The candidates of a stage: successful, within budget, and accurate — or, without ground truth,
/// on the grid's first result-changing setting of that stage (never ranked on speed alone).
fn candidates<'a>(points: &'a [PointOutcome], stage: &str) -> Vec<&'a PointOutcome> {
    let of_stage: Vec<&PointOutcome> = points.iter().filter(|p| p.spec.stage == stage && p.ok()).collect();
    let first_setting = of_stage.first().map(|p| p.spec.settings_label());
    of_stage
        .into_iter()
        .filter(|p| p.within_budget)
        .filter(|p| match p.accurate {
            Some(a) => a,
            None => Some(p.spec.settings_label()) == first_setting,
        })
        .collect()
}

/// Picks the execution configuration (backend + thread variables) with the smallest summed median
/// time over the pipeline's stages (motion-pw if swept, else motion-rigid; cnmf), taking for each
/// stage its fastest accurate, within-budget point with that configuration; falls back to the
/// per-stage best when no configuration was measured on every stage.
fn recommend(points: &[PointOutcome], g: &Grid) -> Option<Recommendation> {
    let swept = |s: &str| points.iter().any(|p| p.spec.stage == s && p.ok());
    let motion = if swept("motion-pw") {
        Some("motion-pw")
    } else if swept("motion-rigid") {
        Some("motion-rigid")
    } else {
        None
    };
    let stages: Vec<&str> = motion.into_iter().chain(swept("cnmf").then_some("cnmf")).collect();
    if stages.is_empty() {
        return None;
    }
    let cands: BTreeMap<&str, Vec<&PointOutcome>> = stages.iter().map(|&s| (s, candidates(points, s))).collect();
    let fastest = |v: &[&PointOutcome], key: Option<&str>| -> Option<PointOutcome> {
        v.iter()
            .filter(|p| key.is_none_or(|k| p.spec.exec_key() == k))
            .min_by(|a, b| {
                // Within 2 % the smaller memory wins.
                if (a.wall_median_s - b.wall_median_s).abs() <= 0.02 * a.wall_median_s.min(b.wall_median_s) {
                    a.peak_rss_median_kib.cmp(&b.peak_rss_median_kib)
                } else {
                    a.wall_median_s.total_cmp(&b.wall_median_s)
                }
            })
            .map(|p| (*p).clone())
    };
    let mut keys: Vec<String> = cands.values().flatten().map(|p| p.spec.exec_key()).collect();
    keys.sort();
    keys.dedup();
    let mut best: Option<(f64, String, Vec<PointOutcome>)> = None;
    for k in &keys {
        let chosen: Option<Vec<PointOutcome>> = stages.iter().map(|s| fastest(&cands[s], Some(k))).collect();
        if let Some(chosen) = chosen {
            let total: f64 = chosen.iter().map(|p| p.wall_median_s).sum();
            if best.as_ref().is_none_or(|(t, _, _)| total < *t) {
                best = Some((total, k.clone(), chosen));
            }
        }
    }
    let mut reasons = Vec::new();
    let chosen: Vec<PointOutcome> = match best {
        Some((total, key, chosen)) => {
            reasons.push(format!(
                "`{key}` has the smallest summed median time over {} ({total:.2} s) among configurations \
                 measured on every stage, within the memory budget and without losing accuracy",
                stages.join(" + ")
            ));
            chosen
        }
        None => {
            let chosen: Vec<PointOutcome> = stages.iter().filter_map(|s| fastest(&cands[s], None)).collect();
            if chosen.is_empty() {
                return None;
            }
            reasons.push(
                "no execution configuration was measured on every stage within the budget: each stage's fastest \
                 qualifying point is listed, and the backend is that of the slowest stage"
                    .to_owned(),
            );
            chosen
        }
    };
    let lead = chosen.iter().max_by(|a, b| a.wall_median_s.total_cmp(&b.wall_median_s))?;
    let mut params = json!({});
    let mut per_stage = BTreeMap::new();
    for p in &chosen {
        per_stage.insert(p.spec.stage.clone(), p.id.clone());
        let Some(run) = p.runs.first() else { continue };
        let Some(obj) = run.params.as_object() else { continue };
        for (group, v) in obj {
            // Motion points own the motion group; CNMF points every other group.
            let mine = if p.spec.stage.starts_with("motion") { group == "motion" } else { group != "motion" };
            if mine || params.get(group).is_none() {
                params[group] = v.clone();
            }
        }
        let acc = accuracy_label(&p.accuracy).unwrap_or_else(|| "no ground truth".into());
        let judged = match p.accurate {
            Some(true) => "within tolerance of the stage's best accuracy".to_owned(),
            Some(false) => "outside the accuracy tolerance".to_owned(),
            None => "accuracy unknown: the grid's first patch/chunk setting was kept".to_owned(),
        };
        reasons.push(format!(
            "{}: [{}] with `{}`: median {:.2} s (min {:.2}), peak {:.0} MiB, {acc} ({judged})",
            p.spec.stage,
            p.spec.settings_label(),
            p.spec.exec_key(),
            p.wall_median_s,
            p.wall_min_s,
            p.peak_rss_median_kib as f64 / 1024.0
        ));
    }
    if let Some(first) = stages.first()
        && first.starts_with("motion")
        && !swept("cnmf")
    {
        reasons.push("only motion correction was swept: the CNMF groups are the base parameters".to_owned());
    }
    let _ = g;
    Some(Recommendation { backend: lead.spec.backend(), env: lead.spec.env.clone(), per_stage, params, reasons })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::{AutoWord, CnmfPatch, Inner};

    fn outcome(
        stage: &str,
        strategy: &str,
        workers: usize,
        rf: usize,
        wall: f64,
        peak_mib: u64,
        f1: f64,
    ) -> PointOutcome {
        let spec = PointSpec {
            stage: stage.into(),
            strategy: strategy.into(),
            workers,
            inner: Inner::Auto(AutoWord::Auto),
            env: BTreeMap::new(),
            num_frames_split: None,
            motion_patch: None,
            cnmf_patch: (stage == "cnmf").then_some(CnmfPatch { rf, stride: Some(rf / 2), k: None }),
        };
        let key = if stage == "cnmf" { "f1" } else { "shift_rms_px" };
        let run = Run {
            wall_s: wall,
            cpu_s: wall,
            peak_rss_kib: peak_mib * 1024,
            parent_peak_rss_kib: peak_mib * 1024,
            workers_peak_rss_kib: 0,
            frames_per_s: 1.0,
            scratch_bytes: 0,
            inner_threads: 1,
            workers,
            accuracy: [(key.to_owned(), Some(f1))].into(),
            params: json!({"patch": {"rf": rf}, "motion": {"pw_rigid": false}}),
            rest: BTreeMap::new(),
        };
        summarise("b".into(), spec, vec![run], None, 1000 << 20)
    }

    #[test]
    fn the_recommendation_is_fastest_within_budget_without_losing_accuracy() {
        let g = Grid { f1_tolerance: 0.02, shift_tolerance_px: 0.05, trace_corr_tolerance: 0.02, ..Grid::default() };
        let mut pts = vec![
            outcome("cnmf", "threads", 2, 15, 10.0, 400, 0.90),
            // Faster, but loses accuracy: never recommended.
            outcome("cnmf", "threads", 2, 8, 4.0, 300, 0.70),
            // Fastest accurate, but above the 1000 MiB budget.
            outcome("cnmf", "processes", 2, 15, 6.0, 1200, 0.90),
            outcome("cnmf", "processes", 2, 25, 8.0, 600, 0.89),
            outcome("motion-rigid", "threads", 2, 0, 3.0, 100, 0.10),
            outcome("motion-rigid", "processes", 2, 0, 2.5, 150, 0.10),
        ];
        judge_accuracy(&mut pts, &g);
        assert_eq!(pts[1].accurate, Some(false));
        assert!(!pts[2].within_budget);
        let r = recommend(&pts, &g).unwrap();
        // processes:2 sums 2.5 + 8.0 = 10.5 s against threads:2's 3.0 + 10.0.
        assert_eq!(r.backend, "processes:2");
        assert!(r.per_stage["cnmf"].contains("rf=25"), "{:?}", r.per_stage);
        assert_eq!(r.params["patch"]["rf"], json!(25));
    }

    #[test]
    fn a_pipeline_point_must_keep_both_its_shift_error_and_its_f1() {
        let g = Grid { f1_tolerance: 0.02, shift_tolerance_px: 0.05, trace_corr_tolerance: 0.02, ..Grid::default() };
        let pipeline = |f1: f64, shift: f64| {
            let mut p = outcome("pipeline", "threads", 2, 20, 30.0, 500, f1);
            p.accuracy = [("f1".to_owned(), f1), ("shift_rms_px".to_owned(), shift)].into();
            p
        };
        // Best F1 0.90, best shift 0.20 px: the second loses F1, the third shift accuracy.
        let mut pts = vec![pipeline(0.90, 0.20), pipeline(0.80, 0.20), pipeline(0.90, 0.40), pipeline(0.89, 0.24)];
        judge_accuracy(&mut pts, &g);
        let judged: Vec<Option<bool>> = pts.iter().map(|p| p.accurate).collect();
        assert_eq!(judged, [Some(true), Some(false), Some(false), Some(true)]);
        assert_eq!(accuracy_label(&pts[0].accuracy).unwrap(), "F1 0.900; shift RMS 0.200 px");
        // The recommendation combines separately swept stages, so a pipeline-only sweep has none.
        assert!(recommend(&pts, &g).is_none());
    }

    #[test]
    fn utc_dates_are_civil() {
        assert_eq!(utc_string(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_string(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_string(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
