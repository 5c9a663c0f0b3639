//! The sweep grid: the TOML file format, its defaults, and its expansion into points, with the
//! checks that refuse nonsensical points.
//!
//! A grid file has top-level settings, an optional `[axes]` table of default axes, and any number
//! of `[[sweep]]` blocks. Each block is a Cartesian product of its axes (missing axes come from
//! `[axes]`, then from the built-in defaults); the sweep is the union of the blocks' points,
//! duplicates removed. Without `[[sweep]]` blocks, `[axes]` alone is the one product. The format,
//! key by key, is documented in `docs/perf/README.md` and `cargo xtask perf-sweep --help`.
//!
//! Stage-specific axes apply only to their stage: `num_frames_split` to both motion stages,
//! `motion_patches` to `motion-pw`, `cnmf_patches` to `cnmf`; `pipeline` (motion correction then
//! CNMF) takes all three — a pipeline point with a motion patch runs piecewise rigid with it,
//! one without runs the base parameters' motion (rigid by default). `linear` always has one worker, so
//! it appears once per combination of the other axes whatever `workers` says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// The stages the sweep knows, with whether caiman-bench can run them; keep in step with
/// `caiman_bench::point::Stage` (the point binary's `stages` command has the last word).
pub const STAGES: [(&str, Option<&str>); 5] =
    [("motion-rigid", None), ("motion-pw", None), ("cnmf", None), ("online", None), ("pipeline", None)];

/// Whether `stage` runs motion correction (the motion axes apply to it).
pub fn stage_has_motion(stage: &str) -> bool {
    stage.starts_with("motion") || stage == "pipeline"
}

/// Whether `stage` runs batch CNMF (the CNMF patch axis applies to it).
pub fn stage_has_cnmf(stage: &str) -> bool {
    stage == "cnmf" || stage == "pipeline"
}

/// Strategies of `caiman_parallel::Backend`.
pub const STRATEGIES: [&str; 3] = ["linear", "threads", "processes"];

/// Inner threads per task: an explicit number, or `auto` (the executor's rule: the share of the
/// cores, capped by the thread variables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Inner {
    /// An explicit number.
    N(usize),
    /// `"auto"`.
    Auto(AutoWord),
}

/// The word `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AutoWord {
    /// `auto`.
    #[serde(rename = "auto")]
    Auto,
}

impl Inner {
    /// The explicit number, if any.
    pub fn explicit(self) -> Option<usize> {
        match self {
            Inner::N(n) => Some(n),
            Inner::Auto(_) => None,
        }
    }
}

/// A motion patch setting (piecewise rigid): stride and overlap on both axes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MotionPatch {
    /// `strides`.
    pub strides: usize,
    /// `overlaps`.
    pub overlaps: usize,
}

/// A CNMF patch setting: `rf` (half-size; 0 = whole field of view), `stride` (CaImAn's overlap),
/// and optionally `K` per patch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CnmfPatch {
    /// `patch.rf`; 0 means no patches.
    pub rf: usize,
    /// `patch.stride`.
    #[serde(default)]
    pub stride: Option<usize>,
    /// `init.K` (default: chosen by caiman-bench from the neuron density, or the params file's).
    #[serde(default, rename = "K", alias = "k")]
    pub k: Option<usize>,
}

impl CnmfPatch {
    /// `rf=15/stride=6`, `whole FOV`.
    pub fn label(&self) -> String {
        if self.rf == 0 {
            return "whole FOV".into();
        }
        let mut s = format!("rf={}", self.rf);
        if let Some(st) = self.stride {
            s.push_str(&format!("/stride={st}"));
        }
        if let Some(k) = self.k {
            s.push_str(&format!("/K={k}"));
        }
        s
    }
}

/// The axes of a product. Every axis is optional; see [`Axes::resolved`] for the defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Axes {
    /// Stages: `motion-rigid` (or `motion`), `motion-pw`, `cnmf`, `online`, `pipeline`.
    pub stages: Option<Vec<String>>,
    /// `linear`, `threads`, `processes`.
    pub strategies: Option<Vec<String>>,
    /// Worker counts.
    pub workers: Option<Vec<usize>>,
    /// Inner threads per task: numbers or `"auto"`.
    pub inner_threads: Option<Vec<Inner>>,
    /// Thread-variable sets, e.g. `[{}, { OMP_NUM_THREADS = "1" }]`.
    pub thread_env: Option<Vec<BTreeMap<String, String>>>,
    /// Motion `num_frames_split` values.
    pub num_frames_split: Option<Vec<usize>>,
    /// Motion patch settings (piecewise rigid).
    pub motion_patches: Option<Vec<MotionPatch>>,
    /// CNMF patch settings.
    pub cnmf_patches: Option<Vec<CnmfPatch>>,
}

impl Axes {
    /// `self` with missing axes taken from `defaults`.
    pub fn or(&self, defaults: &Axes) -> Axes {
        Axes {
            stages: self.stages.clone().or_else(|| defaults.stages.clone()),
            strategies: self.strategies.clone().or_else(|| defaults.strategies.clone()),
            workers: self.workers.clone().or_else(|| defaults.workers.clone()),
            inner_threads: self.inner_threads.clone().or_else(|| defaults.inner_threads.clone()),
            thread_env: self.thread_env.clone().or_else(|| defaults.thread_env.clone()),
            num_frames_split: self.num_frames_split.clone().or_else(|| defaults.num_frames_split.clone()),
            motion_patches: self.motion_patches.clone().or_else(|| defaults.motion_patches.clone()),
            cnmf_patches: self.cnmf_patches.clone().or_else(|| defaults.cnmf_patches.clone()),
        }
    }
}

/// A parsed grid file.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Grid {
    /// `synthetic:D1xD2xT` or a movie path (`movie`).
    pub movie: Option<String>,
    /// Seed of a synthetic movie (`seed`, default 1).
    pub seed: u64,
    /// A CaImAn parameter JSON the points start from (`params`).
    pub params: Option<PathBuf>,
    /// Measured runs per point (`repeats`, default 3).
    pub repeats: usize,
    /// Unmeasured runs before them (`warmup`, default 1).
    pub warmup: usize,
    /// Memory budget (`memory_budget`, e.g. `"16G"`; default: the machine's memory).
    pub memory_budget: Option<String>,
    /// Refuse points with more than this many threads (workers × inner); default 2 × cores.
    pub max_threads: Option<usize>,
    /// Seconds before a run is killed (`timeout_s`, default 1800).
    pub timeout_s: u64,
    /// F1 a patch setting may lose against the best and still count as accurate (`f1_tolerance`,
    /// default 0.02).
    pub f1_tolerance: f64,
    /// Median trace correlation it may lose (`trace_corr_tolerance`, default 0.02).
    pub trace_corr_tolerance: f64,
    /// Shift RMS error (px) a motion setting may add against the best (`shift_tolerance_px`,
    /// default 0.05).
    pub shift_tolerance_px: f64,
    /// Default axes (`[axes]`).
    pub axes: Axes,
    /// The `[[sweep]]` blocks: name and axes.
    pub blocks: Vec<(String, Axes)>,
}

/// The top-level keys a grid file may have.
const TOP_KEYS: [&str; 13] = [
    "movie",
    "seed",
    "params",
    "repeats",
    "warmup",
    "memory_budget",
    "max_threads",
    "timeout_s",
    "f1_tolerance",
    "trace_corr_tolerance",
    "shift_tolerance_px",
    "axes",
    "sweep",
];

impl Grid {
    /// Parses grid TOML; `origin` names it in errors.
    ///
    /// # Errors
    /// TOML syntax errors, unknown keys, wrong types — each naming `origin` and the key.
    pub fn parse(text: &str, origin: &str) -> Result<Grid> {
        let mut table: toml::Table = toml::from_str(text).with_context(|| format!("{origin}: not valid TOML"))?;
        for k in table.keys() {
            if !TOP_KEYS.contains(&k.as_str()) {
                bail!("{origin}: unknown key `{k}` (known: {})", TOP_KEYS.join(", "));
            }
        }
        fn get<T: serde::de::DeserializeOwned>(t: &mut toml::Table, key: &str, origin: &str) -> Result<Option<T>> {
            match t.remove(key) {
                None => Ok(None),
                Some(v) => v.try_into().map(Some).with_context(|| format!("{origin}: bad value for `{key}`")),
            }
        }
        let axes: Axes = get(&mut table, "axes", origin)?.unwrap_or_default();
        let mut blocks = Vec::new();
        if let Some(v) = table.remove("sweep") {
            let toml::Value::Array(items) = v else {
                bail!("{origin}: `sweep` must be an array of tables ([[sweep]])")
            };
            for (i, item) in items.into_iter().enumerate() {
                let toml::Value::Table(mut t) = item else { bail!("{origin}: [[sweep]] #{} is not a table", i + 1) };
                let name = match t.remove("name") {
                    Some(toml::Value::String(s)) => s,
                    Some(_) => bail!("{origin}: [[sweep]] #{}: `name` must be a string", i + 1),
                    None => format!("sweep {}", i + 1),
                };
                let a: Axes = toml::Value::Table(t)
                    .try_into()
                    .with_context(|| format!("{origin}: [[sweep]] {name:?}: bad axes"))?;
                blocks.push((name, a));
            }
        }
        let f = |v: Option<f64>, d: f64| v.unwrap_or(d);
        let grid = Grid {
            movie: get(&mut table, "movie", origin)?,
            seed: get(&mut table, "seed", origin)?.unwrap_or(1),
            params: get(&mut table, "params", origin)?,
            repeats: get(&mut table, "repeats", origin)?.unwrap_or(3),
            warmup: get(&mut table, "warmup", origin)?.unwrap_or(1),
            memory_budget: get(&mut table, "memory_budget", origin)?,
            max_threads: get(&mut table, "max_threads", origin)?,
            timeout_s: get(&mut table, "timeout_s", origin)?.unwrap_or(1800),
            f1_tolerance: f(get(&mut table, "f1_tolerance", origin)?, 0.02),
            trace_corr_tolerance: f(get(&mut table, "trace_corr_tolerance", origin)?, 0.02),
            shift_tolerance_px: f(get(&mut table, "shift_tolerance_px", origin)?, 0.05),
            axes,
            blocks,
        };
        if grid.repeats == 0 {
            bail!("{origin}: `repeats` must be at least 1");
        }
        Ok(grid)
    }
}

/// One point of the sweep: a stage and every setting of it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PointSpec {
    /// The stage.
    pub stage: String,
    /// `linear`, `threads`, `processes`.
    pub strategy: String,
    /// Workers (1 for linear).
    pub workers: usize,
    /// Inner threads per task.
    pub inner: Inner,
    /// Thread variables set for the run.
    pub env: BTreeMap<String, String>,
    /// Motion `num_frames_split` (`None`: the base parameters').
    pub num_frames_split: Option<usize>,
    /// Motion patches (`motion-pw`, and `pipeline`, which then runs piecewise rigid).
    pub motion_patch: Option<MotionPatch>,
    /// CNMF patches (`cnmf` and `pipeline`; `None`: the base parameters').
    pub cnmf_patch: Option<CnmfPatch>,
}

impl PointSpec {
    /// The backend in `caiman`'s short form (`processes:2,inner=1`).
    pub fn backend(&self) -> String {
        let mut s = match self.strategy.as_str() {
            "linear" => "linear".to_owned(),
            k => format!("{k}:{}", self.workers),
        };
        if let Inner::N(n) = self.inner {
            s.push_str(&format!(",inner={n}"));
        }
        s
    }

    /// The thread variables as `K=V K=V` (empty when none).
    pub fn env_label(&self) -> String {
        self.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    }

    /// Backend plus environment: the execution configuration, which never changes results.
    pub fn exec_key(&self) -> String {
        let e = self.env_label();
        if e.is_empty() { self.backend() } else { format!("{} {e}", self.backend()) }
    }

    /// The settings that may change results (patch and chunk sizes), as a label.
    pub fn settings_label(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.num_frames_split {
            parts.push(format!("chunk={n}"));
        }
        if let Some(p) = self.motion_patch {
            let pw = if self.stage == "pipeline" { "pw " } else { "" };
            parts.push(format!("{pw}strides={}/overlaps={}", p.strides, p.overlaps));
        }
        if let Some(p) = self.cnmf_patch {
            parts.push(p.label());
        }
        if parts.is_empty() { "base params".into() } else { parts.join(" ") }
    }

    /// A short unique id (`cnmf threads:2 rf=15/stride=6`).
    pub fn id(&self) -> String {
        format!("{} {} [{}]", self.stage, self.exec_key(), self.settings_label())
    }

    /// Workers × inner threads this point will use on `cores` cores (the executor's rule for
    /// `auto`: `max(1, cores / workers)`, capped by the smallest thread variable).
    pub fn threads(&self, cores: usize) -> usize {
        let inner = match self.inner {
            Inner::N(n) => n,
            Inner::Auto(_) => {
                let share = (cores / self.workers.max(1)).max(1);
                let cap = self
                    .env
                    .iter()
                    .filter(|(k, _)| THREAD_VARS.contains(&k.as_str()))
                    .filter_map(|(_, v)| v.split(',').next()?.trim().parse::<usize>().ok())
                    .filter(|&v| v > 0)
                    .min();
                cap.map_or(share, |c| c.min(share))
            }
        };
        self.workers * inner
    }
}

/// The thread variables caiman-parallel reads (`caiman_parallel::THREAD_ENV_VARS`).
pub const THREAD_VARS: [&str; 5] =
    ["RAYON_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"];

/// The built-in defaults of every axis: the two main stages, a thread pool of CaImAn's
/// `max(cores − 1, 1)` workers, `auto` inner threads, no thread variables, the base parameters'
/// chunk and patch sizes.
pub fn builtin_axes(cores: usize) -> Axes {
    Axes {
        stages: Some(vec!["motion-rigid".into(), "cnmf".into()]),
        strategies: Some(vec!["threads".into()]),
        workers: Some(vec![cores.saturating_sub(1).max(1)]),
        inner_threads: Some(vec![Inner::Auto(AutoWord::Auto)]),
        thread_env: Some(vec![BTreeMap::new()]),
        num_frames_split: None,
        motion_patches: None,
        cnmf_patches: None,
    }
}

/// Canonical stage name, or an error naming the known ones (or why a stage is unavailable).
///
/// # Errors
/// Unknown or unavailable stages.
pub fn check_stage(name: &str) -> Result<String> {
    let name = if name.trim() == "motion" { "motion-rigid" } else { name.trim() };
    match STAGES.iter().find(|(s, _)| *s == name) {
        Some((s, None)) => Ok((*s).to_owned()),
        Some((s, Some(why))) => bail!(
            "stage `{s}` cannot be swept yet: {why}; it is in the stage list and the lead wires it in \
             caiman_bench::point (sweep motion-rigid, motion-pw or cnmf meanwhile)"
        ),
        None => {
            let known: Vec<&str> = STAGES.iter().map(|(s, _)| *s).collect();
            bail!("unknown stage {name:?} (known: {})", known.join(", "))
        }
    }
}

/// A point the sweep will not run, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Refusal {
    /// The point.
    pub point: String,
    /// Why (a full sentence).
    pub why: String,
}

/// Expands the grid into points (union over blocks, duplicates removed, in first-seen order),
/// keeping only `only_stages` when given. Checks stage and strategy names and that workers and
/// thread counts are positive.
///
/// # Errors
/// Unknown or unavailable stages, unknown strategies, zero workers, thread variables that are not
/// caiman's.
pub fn expand(grid: &Grid, cores: usize, only_stages: Option<&[String]>) -> Result<Vec<(String, PointSpec)>> {
    let defaults = grid.axes.or(&builtin_axes(cores));
    let blocks: Vec<(String, Axes)> = if grid.blocks.is_empty() {
        vec![("axes".to_owned(), defaults.clone())]
    } else {
        grid.blocks.iter().map(|(n, a)| (n.clone(), a.or(&defaults))).collect()
    };
    let only: Option<BTreeSet<String>> =
        only_stages.map(|s| s.iter().map(|n| check_stage(n)).collect::<Result<_>>()).transpose()?;
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (name, a) in &blocks {
        let list = |v: &Option<Vec<usize>>| v.clone().map_or(vec![None], |v| v.into_iter().map(Some).collect());
        for stage in a.stages.as_deref().unwrap_or_default() {
            let stage = check_stage(stage).with_context(|| format!("[[sweep]] {name:?}"))?;
            if only.as_ref().is_some_and(|o| !o.contains(&stage)) {
                continue;
            }
            for strategy in a.strategies.as_deref().unwrap_or_default() {
                if !STRATEGIES.contains(&strategy.as_str()) {
                    bail!("[[sweep]] {name:?}: unknown strategy {strategy:?} (known: {})", STRATEGIES.join(", "));
                }
                let workers: Vec<usize> =
                    if strategy == "linear" { vec![1] } else { a.workers.clone().unwrap_or_default() };
                for &w in &workers {
                    if w == 0 {
                        bail!("[[sweep]] {name:?}: workers must be at least 1");
                    }
                    for &inner in a.inner_threads.as_deref().unwrap_or_default() {
                        if inner == Inner::N(0) {
                            bail!("[[sweep]] {name:?}: inner_threads must be at least 1 (or \"auto\")");
                        }
                        for env in a.thread_env.as_deref().unwrap_or_default() {
                            if let Some(k) = env.keys().find(|k| !THREAD_VARS.contains(&k.as_str())) {
                                bail!(
                                    "[[sweep]] {name:?}: thread_env variable {k:?} is not one caiman reads ({})",
                                    THREAD_VARS.join(", ")
                                );
                            }
                            let chunks = if stage_has_motion(&stage) { list(&a.num_frames_split) } else { vec![None] };
                            let mpatches: Vec<Option<MotionPatch>> = if stage == "motion-pw" || stage == "pipeline" {
                                a.motion_patches.clone().map_or(vec![None], |v| v.into_iter().map(Some).collect())
                            } else {
                                vec![None]
                            };
                            let cpatches: Vec<Option<CnmfPatch>> = if stage_has_cnmf(&stage) {
                                a.cnmf_patches.clone().map_or(vec![None], |v| v.into_iter().map(Some).collect())
                            } else {
                                vec![None]
                            };
                            for &num_frames_split in &chunks {
                                for &motion_patch in &mpatches {
                                    for &cnmf_patch in &cpatches {
                                        let p = PointSpec {
                                            stage: stage.clone(),
                                            strategy: strategy.clone(),
                                            workers: w,
                                            inner,
                                            env: env.clone(),
                                            num_frames_split,
                                            motion_patch,
                                            cnmf_patch,
                                        };
                                        if seen.insert(p.clone()) {
                                            out.push((name.clone(), p));
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    if out.is_empty() {
        bail!("the grid has no points (check `stages` and --stages)");
    }
    Ok(out)
}

/// Parses a memory size: `16G`, `512M`, `1.5GiB`, `2048MB`, or bytes (binary units throughout).
///
/// # Errors
/// Anything else.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().with_context(|| format!("memory size {s:?}: expected e.g. 16G, 512M"))?;
    let mult = match unit.trim().to_ascii_lowercase().trim_end_matches('b').trim_end_matches('i') {
        "" => 1u64,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => bail!("memory size {s:?}: unknown unit {unit:?} (use K, M, G or T)"),
    };
    if v.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        bail!("memory size {s:?} must be positive");
    }
    Ok((v * mult as f64) as u64)
}

/// `1.5 GiB`, `300 MiB`.
pub fn fmt_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else {
        format!("{:.0} MiB", b / (1u64 << 20) as f64)
    }
}

/// The refusal of `p`, if any: more threads than `max_threads`, or a memory budget below what one
/// patch (CNMF: `(2·rf+1)² · T · 4 B`, CaImAn's per-patch data; the whole field of view without
/// patches) or one motion chunk (`num_frames_split` frames in and out, f32) needs (the larger of
/// the two for `pipeline`; online points are checked as a motion chunk). `dims` and
/// `frames` describe the movie; `default_chunk` is the base parameters' `num_frames_split`.
pub fn refusal(
    p: &PointSpec,
    cores: usize,
    max_threads: usize,
    budget: u64,
    dims: [usize; 3],
    frames: usize,
    default_chunk: usize,
) -> Option<String> {
    let threads = p.threads(cores);
    if threads > max_threads {
        return Some(format!(
            "{} uses {} workers × {} inner threads = {threads} threads, above the limit of {max_threads} \
             (max_threads; default 2 × {cores} cores): raise max_threads in the grid to measure that much \
             oversubscription",
            p.exec_key(),
            p.workers,
            threads / p.workers.max(1)
        ));
    }
    let pixels = (dims[0] * dims[1] * dims[2]) as u64;
    let cnmf_need = || match p.cnmf_patch {
        Some(c) if c.rf > 0 => {
            let side = (2 * c.rf + 1).min(dims[0].max(dims[1])) as u64;
            (format!("one patch (rf={}: {side}² px × {frames} frames × 4 B)", c.rf), side * side * frames as u64 * 4)
        }
        _ => (format!("the whole field of view ({pixels} px × {frames} frames × 4 B)"), pixels * frames as u64 * 4),
    };
    let motion_need = || {
        let n = p.num_frames_split.unwrap_or(default_chunk).min(frames) as u64;
        (format!("one motion chunk ({n} frames × {pixels} px × 4 B, in and out)"), 2 * n * pixels * 4)
    };
    let (what, need) = match p.stage.as_str() {
        "cnmf" => cnmf_need(),
        "pipeline" => {
            let (c, m) = (cnmf_need(), motion_need());
            if c.1 >= m.1 { c } else { m }
        }
        _ => motion_need(),
    };
    (need > budget).then(|| {
        format!(
            "the memory budget of {} is below {what} = {}: raise --memory-budget or use a smaller patch/chunk",
            fmt_bytes(budget),
            fmt_bytes(need)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRID: &str = r#"
movie = "synthetic:64x64x100"
repeats = 2
[axes]
strategies = ["linear", "threads", "processes"]
workers = [1, 2]
[[sweep]]
name = "scaling"
stages = ["motion", "cnmf"]
[[sweep]]
name = "patch size"
stages = ["cnmf"]
strategies = ["threads"]
workers = [2]
inner_threads = ["auto", 1]
cnmf_patches = [{ rf = 10, stride = 4 }, { rf = 0 }]
"#;

    #[test]
    fn blocks_expand_to_the_union_of_their_products() {
        let g = Grid::parse(GRID, "test").unwrap();
        assert_eq!((g.repeats, g.warmup, g.seed), (2, 1, 1));
        let pts = expand(&g, 2, None).unwrap();
        // scaling: 2 stages × (linear + threads×2 + processes×2) = 10; patch size: 2 inner × 2 patches = 4.
        assert_eq!(pts.len(), 14, "{:#?}", pts.iter().map(|(_, p)| p.id()).collect::<Vec<_>>());
        assert_eq!(pts.iter().filter(|(_, p)| p.strategy == "linear").count(), 2);
        assert!(pts.iter().all(|(_, p)| p.stage != "motion-rigid" || p.cnmf_patch.is_none()));
        let only = expand(&g, 2, Some(&["cnmf".to_owned()])).unwrap();
        assert_eq!(only.len(), 9);
    }

    #[test]
    fn pipeline_points_take_the_motion_and_the_cnmf_axes() {
        let g = Grid::parse(
            r#"
[axes]
stages = ["pipeline", "motion-rigid", "cnmf"]
strategies = ["processes"]
workers = [1, 2]
num_frames_split = [40, 80]
motion_patches = [{ strides = 48, overlaps = 24 }]
cnmf_patches = [{ rf = 20, stride = 8, K = 4 }, { rf = 0 }]
"#,
            "test",
        )
        .unwrap();
        let pts = expand(&g, 2, Some(&["pipeline".to_owned()])).unwrap();
        // 2 workers × 2 chunks × 1 motion patch × 2 CNMF patches.
        assert_eq!(pts.len(), 8);
        for (_, p) in &pts {
            assert!(p.num_frames_split.is_some() && p.motion_patch.is_some() && p.cnmf_patch.is_some(), "{p:?}");
            assert!(p.settings_label().contains("pw strides=48"), "{}", p.settings_label());
        }
        let all = expand(&g, 2, None).unwrap();
        // motion-rigid: 2 workers × 2 chunks; cnmf: 2 workers × 2 patches.
        assert_eq!(all.len(), 8 + 4 + 4);
        assert!(
            all.iter().all(|(_, p)| p.stage != "motion-rigid" || (p.cnmf_patch.is_none() && p.motion_patch.is_none()))
        );
        // The pipeline is refused below the larger of its two needs: one 41² patch × 2000 frames
        // (13.4 MB) vs one chunk of 40 frames in and out (84 MB) at 512².
        let p = pts.iter().map(|(_, p)| p).find(|p| p.num_frames_split == Some(40) && p.workers == 1).unwrap();
        let why = refusal(p, 2, 4, 64 << 20, [512, 512, 1], 2000, 80).unwrap();
        assert!(why.contains("one motion chunk"), "{why}");
        assert!(refusal(p, 2, 4, 128 << 20, [512, 512, 1], 2000, 80).is_none());
        let whole = PointSpec { cnmf_patch: Some(CnmfPatch { rf: 0, stride: None, k: None }), ..p.clone() };
        let why = refusal(&whole, 2, 4, 128 << 20, [512, 512, 1], 2000, 80).unwrap();
        assert!(why.contains("whole field of view"), "{why}");
    }

    #[test]
    fn bad_grids_are_refused_with_the_key_named() {
        let e = Grid::parse("movie = 3", "g.toml").unwrap_err();
        assert!(format!("{e:#}").contains("movie"), "{e:#}");
        let e = Grid::parse("bogus = 1", "g.toml").unwrap_err();
        assert!(e.to_string().contains("bogus"));
        let e = Grid::parse("[[sweep]]\nstages = [\"cnmf\"]\nworkerz = [1]", "g.toml").unwrap_err();
        assert!(format!("{e:#}").contains("workerz"), "{e:#}");
        let g = Grid::parse("[axes]\nstages = [\"onlinee\"]", "g.toml").unwrap();
        let e = expand(&g, 2, None).unwrap_err();
        assert!(format!("{e:#}").contains("onlinee"), "{e:#}");
        let g = Grid::parse("[axes]\nstrategies = [\"mpi\"]", "g.toml").unwrap();
        assert!(expand(&g, 2, None).is_err());
    }

    #[test]
    fn nonsensical_points_are_refused() {
        let p = PointSpec {
            stage: "cnmf".into(),
            strategy: "threads".into(),
            workers: 4,
            inner: Inner::N(2),
            env: BTreeMap::new(),
            num_frames_split: None,
            motion_patch: None,
            cnmf_patch: Some(CnmfPatch { rf: 20, stride: Some(10), k: None }),
        };
        let dims = [512, 512, 1];
        let why = refusal(&p, 2, 4, 1 << 34, dims, 2000, 80).unwrap();
        assert!(why.contains("8 threads") && why.contains("limit of 4"), "{why}");
        // 41² px × 2000 frames × 4 B = 13.4 MB > 8 MiB.
        let ok = PointSpec { inner: Inner::N(1), workers: 2, ..p.clone() };
        let why = refusal(&ok, 2, 4, 8 << 20, dims, 2000, 80).unwrap();
        assert!(why.contains("below one patch"), "{why}");
        assert!(refusal(&ok, 2, 4, 16 << 20, dims, 2000, 80).is_none());
        // auto inner threads: the share of the cores, capped by OMP_NUM_THREADS.
        let auto = PointSpec { inner: Inner::Auto(AutoWord::Auto), workers: 1, ..p };
        assert_eq!(auto.threads(8), 8);
        let capped = PointSpec { env: [("OMP_NUM_THREADS".to_owned(), "1".to_owned())].into(), ..auto };
        assert_eq!(capped.threads(8), 1);
    }

    #[test]
    fn memory_sizes_parse() {
        assert_eq!(parse_bytes("16G").unwrap(), 16 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1.5GB").unwrap(), 3 << 29);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert!(parse_bytes("lots").is_err() && parse_bytes("3X").is_err() && parse_bytes("0G").is_err());
    }

    #[test]
    fn the_shipped_grids_parse_and_expand() {
        for (name, text) in [("quick", crate::sweep::QUICK_GRID), ("default", crate::sweep::DEFAULT_GRID)] {
            let g = Grid::parse(text, name).unwrap();
            let pts = expand(&g, 2, None).unwrap();
            assert!(pts.len() >= 8, "{name}: {}", pts.len());
        }
    }
}
