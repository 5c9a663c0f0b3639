//! The sweep's outputs: `points.csv` (one row per point, medians and minima), `runs.csv` (one row
//! per measured run), `sweep.json` (everything, with host, cores, CPU, rustc and git revision),
//! `report.md` (tables, plots, the recommendation and why), the PNG plots, and the recommended
//! configuration: `recommended_params.json` (for `caiman pipeline --params`),
//! `recommended_backend.txt` (for `--backend`) and `recommended.sh` (the whole command line).
//!
//! Every file is written under a temporary name and renamed, so a reader never sees half a file.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::grid::fmt_bytes;
use crate::plot::{Chart, PALETTE, Series, Style};
use crate::sweep::{PointOutcome, SweepOutcome, accuracy_label};

/// Writes `text` to `dir/name` atomically.
fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.partial"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))
}

/// A CSV field, quoted when needed.
fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.6}")).unwrap_or_default()
}

/// Columns of `points.csv`.
pub const POINT_COLUMNS: [&str; 24] = [
    "block",
    "stage",
    "strategy",
    "workers",
    "inner_threads",
    "thread_env",
    "backend",
    "settings",
    "runs",
    "wall_median_s",
    "wall_min_s",
    "cpu_median_s",
    "peak_rss_median_mib",
    "peak_rss_max_mib",
    "frames_per_s",
    "scratch_mib",
    "shift_rms_px",
    "f1",
    "precision",
    "recall",
    "median_trace_corr",
    "within_budget",
    "accurate",
    "error",
];

fn points_csv(o: &SweepOutcome) -> String {
    let mut s = POINT_COLUMNS.join(",");
    s.push('\n');
    for p in &o.points {
        let a = |k: &str| opt(p.accuracy.get(k).copied());
        let inner = p.runs.first().map(|r| r.inner_threads.to_string()).unwrap_or_default();
        let row = [
            csv(&p.block),
            p.spec.stage.clone(),
            p.spec.strategy.clone(),
            p.spec.workers.to_string(),
            inner,
            csv(&p.spec.env_label()),
            csv(&p.spec.backend()),
            csv(&p.spec.settings_label()),
            p.runs.len().to_string(),
            opt(Some(p.wall_median_s).filter(|v| v.is_finite())),
            opt(Some(p.wall_min_s).filter(|v| v.is_finite())),
            opt(Some(p.cpu_median_s).filter(|v| v.is_finite())),
            format!("{:.1}", p.peak_rss_median_kib as f64 / 1024.0),
            format!("{:.1}", p.peak_rss_max_kib as f64 / 1024.0),
            opt(Some(p.fps_median).filter(|v| v.is_finite())),
            format!("{:.1}", p.scratch_bytes as f64 / (1 << 20) as f64),
            a("shift_rms_px"),
            a("f1"),
            a("precision"),
            a("recall"),
            a("median_trace_corr"),
            p.within_budget.to_string(),
            p.accurate.map(|b| b.to_string()).unwrap_or_default(),
            csv(p.error.as_deref().unwrap_or("")),
        ];
        s.push_str(&row.join(","));
        s.push('\n');
    }
    s
}

fn runs_csv(o: &SweepOutcome) -> String {
    let mut s = String::from(
        "point,run,wall_s,cpu_s,peak_rss_kib,parent_peak_rss_kib,workers_peak_rss_kib,frames_per_s,scratch_bytes\n",
    );
    for p in &o.points {
        for (i, r) in p.runs.iter().enumerate() {
            let _ = writeln!(
                s,
                "{},{i},{:.6},{:.6},{},{},{},{:.3},{}",
                csv(&p.id),
                r.wall_s,
                r.cpu_s,
                r.peak_rss_kib,
                r.parent_peak_rss_kib,
                r.workers_peak_rss_kib,
                r.frames_per_s,
                r.scratch_bytes
            );
        }
    }
    s
}

/// Patch side in pixels for the memory/accuracy plots: `2·rf + 1` (CNMF and the pipeline, whose
/// memory CNMF's patches drive), `strides + overlaps` (motion); the whole field of view is plotted
/// at the frame's larger side.
fn patch_side(p: &PointOutcome, dims: [usize; 3]) -> Option<f64> {
    match (p.spec.stage.as_str(), p.spec.cnmf_patch, p.spec.motion_patch) {
        ("cnmf" | "pipeline", Some(c), _) if c.rf > 0 => Some((2 * c.rf + 1) as f64),
        ("cnmf" | "pipeline", _, _) => Some(dims[0].max(dims[1]) as f64),
        ("motion-pw", _, Some(m)) => Some((m.strides + m.overlaps) as f64),
        _ => None,
    }
}

/// Groups `points` into series by `key`, colours assigned in order.
fn series_by<'a>(
    points: impl Iterator<Item = &'a PointOutcome>,
    key: impl Fn(&PointOutcome) -> String,
    xy: impl Fn(&PointOutcome) -> Option<(f64, f64)>,
    style: Style,
) -> Vec<Series> {
    let mut groups: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut order = Vec::new();
    for p in points {
        if let Some(v) = xy(p) {
            let k = key(p);
            if !groups.contains_key(&k) {
                order.push(k.clone());
            }
            groups.entry(k).or_default().push(v);
        }
    }
    order
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            let mut pts = groups.remove(&k).unwrap_or_default();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series { name: k, points: pts, style, color: PALETTE[i % PALETTE.len()] }
        })
        .collect()
}

/// The plots; returns `(file name, caption)` pairs.
fn plots(dir: &Path, o: &SweepOutcome) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let ok: Vec<&PointOutcome> = o.points.iter().filter(|p| p.ok()).collect();
    let mut stages: Vec<String> = ok.iter().map(|p| p.spec.stage.clone()).collect();
    stages.dedup();
    stages.sort();
    stages.dedup();
    let budget_mib = o.meta.memory_budget as f64 / (1 << 20) as f64;
    for stage in &stages {
        let of: Vec<&PointOutcome> = ok.iter().copied().filter(|p| &p.spec.stage == stage).collect();
        // 1. Time vs workers, one line per strategy (+ inner threads and variables), on the stage's most
        // common patch/chunk setting so that only execution changes along a line.
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for p in &of {
            *counts.entry(p.spec.settings_label()).or_default() += 1;
        }
        let main_setting = counts.iter().max_by_key(|(_, n)| **n).map(|(k, _)| k.clone()).unwrap_or_default();
        let scaling: Vec<&PointOutcome> =
            of.iter().copied().filter(|p| p.spec.settings_label() == main_setting).collect();
        let label = |p: &PointOutcome| {
            let mut s = p.spec.strategy.clone();
            if let Some(n) = p.spec.inner.explicit() {
                s.push_str(&format!(" inner={n}"));
            }
            let e = p.spec.env_label();
            if !e.is_empty() {
                s.push_str(&format!(" {e}"));
            }
            s
        };
        let mut series = series_by(
            scaling.iter().copied(),
            label,
            |p| Some((p.spec.workers as f64, p.wall_median_s)),
            Style::LineMarkers,
        );
        let minima: Vec<Series> =
            series_by(scaling.iter().copied(), label, |p| Some((p.spec.workers as f64, p.wall_min_s)), Style::Hollow)
                .into_iter()
                .zip(series.iter())
                .map(|(mut m, s)| {
                    m.color = s.color;
                    m.name = String::new();
                    m
                })
                .collect();
        series.extend(minima);
        let name = format!("time_vs_workers_{stage}.png");
        Chart {
            title: format!("{stage}: wall time vs workers ({main_setting})"),
            x_label: "workers".into(),
            y_label: "median wall s (hollow: min)".into(),
            series,
            h_line: None,
            y_from_zero: true,
        }
        .render(900, 560)
        .save(&dir.join(&name))?;
        out.push((name, format!("{stage}: median wall time (filled) and minimum (hollow) against workers, one line per strategy; patch/chunk setting `{main_setting}`.")));

        // 2 and 3. Memory and accuracy vs patch size, where patch sizes vary.
        let with_side: Vec<&PointOutcome> =
            of.iter().copied().filter(|p| patch_side(p, o.meta.dims).is_some()).collect();
        let sides: std::collections::BTreeSet<u64> =
            with_side.iter().filter_map(|p| patch_side(p, o.meta.dims)).map(|v| v as u64).collect();
        if sides.len() >= 2 {
            let series = series_by(
                with_side.iter().copied(),
                |p| p.spec.exec_key(),
                |p| Some((patch_side(p, o.meta.dims)?, p.peak_rss_median_kib as f64 / 1024.0)),
                Style::LineMarkers,
            );
            let name = format!("memory_vs_patch_{stage}.png");
            let cnmf_like = stage == "cnmf" || stage == "pipeline";
            let side_what = if cnmf_like {
                "patch side 2rf+1 px (whole FOV at frame size)"
            } else {
                "patch side strides+overlaps px"
            };
            Chart {
                title: format!("{stage}: peak memory of the process tree vs patch size"),
                x_label: side_what.into(),
                y_label: "median peak RSS MiB".into(),
                series,
                h_line: Some((budget_mib, format!("budget {}", fmt_bytes(o.meta.memory_budget)))),
                y_from_zero: true,
            }
            .render(900, 560)
            .save(&dir.join(&name))?;
            out.push((name, format!("{stage}: median peak RSS (parent + workers) against patch size, one line per execution configuration; the dashed line is the memory budget when it is in range.")));

            let acc_keys: &[(&str, &str)] = if cnmf_like {
                &[
                    ("f1", "F1"),
                    ("median_trace_corr", "median trace r"),
                    ("precision", "precision"),
                    ("recall", "recall"),
                ]
            } else {
                &[("shift_rms_px", "shift RMS error px")]
            };
            let mut series = Vec::new();
            for (i, (k, label)) in acc_keys.iter().enumerate() {
                let mut pts: Vec<(f64, f64)> = with_side
                    .iter()
                    .filter_map(|p| Some((patch_side(p, o.meta.dims)?, *p.accuracy.get(*k)?)))
                    .collect();
                pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
                pts.dedup_by(|a, b| a.0 == b.0);
                if !pts.is_empty() {
                    series.push(Series {
                        name: (*label).to_owned(),
                        points: pts,
                        style: Style::LineMarkers,
                        color: PALETTE[i],
                    });
                }
            }
            if !series.is_empty() {
                let name = format!("accuracy_vs_patch_{stage}.png");
                Chart {
                    title: format!("{stage}: accuracy vs patch size (ground truth)"),
                    x_label: side_what.into(),
                    y_label: if cnmf_like { "score".into() } else { "px".into() },
                    series,
                    h_line: None,
                    y_from_zero: !cnmf_like,
                }
                .render(900, 560)
                .save(&dir.join(&name))?;
                out.push((name, format!("{stage}: accuracy against the synthetic ground truth for each patch size (identical for every execution configuration: the strategy never changes results).")));
            }
        }

        // 4. Time–memory Pareto front.
        let pts: Vec<(f64, f64)> =
            of.iter().map(|p| (p.wall_median_s, p.peak_rss_median_kib as f64 / 1024.0)).collect();
        let mut front: Vec<(f64, f64)> = pts
            .iter()
            .copied()
            .filter(|a| !pts.iter().any(|b| (b.0 <= a.0 && b.1 <= a.1) && (b.0 < a.0 || b.1 < a.1)))
            .collect();
        front.sort_by(|a, b| a.0.total_cmp(&b.0));
        let name = format!("pareto_{stage}.png");
        Chart {
            title: format!("{stage}: time-memory trade-off"),
            x_label: "median wall s".into(),
            y_label: "median peak RSS MiB".into(),
            series: vec![
                Series { name: "all points".into(), points: pts, style: Style::Hollow, color: PALETTE[7] },
                Series { name: "Pareto front".into(), points: front, style: Style::LineMarkers, color: PALETTE[3] },
            ],
            h_line: Some((budget_mib, format!("budget {}", fmt_bytes(o.meta.memory_budget)))),
            y_from_zero: true,
        }
        .render(900, 560)
        .save(&dir.join(&name))?;
        out.push((name, format!("{stage}: every point's median wall time against its median peak memory; the red line joins the points no other point beats on both.")));
    }
    Ok(out)
}

fn markdown(o: &SweepOutcome, figures: &[(String, String)]) -> String {
    let m = &o.meta;
    let mut s = String::new();
    let _ = writeln!(s, "# Performance sweep: {}\n", m.movie);
    let _ = writeln!(
        s,
        "Generated by `cargo xtask perf-sweep` ({}). Every run is a fresh `caiman-bench-point` process; each point had {} \
         warm-up run(s) and {} measured run(s); times are the median (and minimum) of the measured runs. Machine noise on \
         shared machines can reach ×1.8, so compare medians and treat differences under ~20 % as ties.\n",
        m.grid, m.warmup, m.repeats
    );
    let _ = writeln!(s, "| | |\n|---|---|");
    for (k, v) in [
        ("host", m.host.clone()),
        ("cores", m.cores.to_string()),
        ("CPU", m.cpu.clone()),
        ("memory", fmt_bytes(m.memory_bytes)),
        ("rustc", m.rustc.clone()),
        ("git revision", m.git_rev.clone()),
        ("started (UTC)", m.started_utc.clone()),
        ("duration", format!("{:.0} s, of which {:.0} s running the points", m.duration_s, m.points_s)),
        ("load average at start / end", format!("{} / {}", m.load_start, m.load_end)),
        ("memory budget", fmt_bytes(m.memory_budget)),
        ("thread limit (workers × inner)", m.max_threads.to_string()),
        ("accuracy tolerances", m.tolerances.to_string()),
        ("command", format!("`{}`", m.command)),
    ] {
        let _ = writeln!(s, "| {k} | {} |", v.replace('|', "\\|"));
    }
    let _ = writeln!(s, "\n## Recommendation\n");
    match &o.recommendation {
        Some(r) => {
            let env: String = r.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
            let _ = writeln!(
                s,
                "```sh\n{env}caiman pipeline MOVIE -o results.hdf5 --params recommended_params.json --backend {}\n```\n",
                r.backend
            );
            for reason in &r.reasons {
                let _ = writeln!(s, "- {reason}");
            }
            let _ = writeln!(
                s,
                "\n`recommended_params.json` holds the CaImAn groups the chosen points ran with (motion group from the \
                 motion point, the CNMF groups from the CNMF point); `recommended_backend.txt` the `--backend` value; \
                 `recommended.sh` the command above."
            );
        }
        None if !o.points.iter().any(|p| matches!(p.spec.stage.as_str(), "motion-rigid" | "motion-pw" | "cnmf")) => {
            let _ = writeln!(
                s,
                "None: the recommendation combines the separately swept stages (motion-rigid or motion-pw, and cnmf),                  and this sweep measured none of them."
            );
        }
        None => {
            let _ = writeln!(s, "No point qualified (every point failed, was refused, or exceeded the memory budget).");
        }
    }
    let mut stages: Vec<&str> = o.points.iter().map(|p| p.spec.stage.as_str()).collect();
    stages.sort();
    stages.dedup();
    for stage in stages {
        let _ = writeln!(s, "\n## {stage}\n");
        let _ = writeln!(
            s,
            "| settings | backend | threads env | median s | min s | CPU s | peak MiB (parent + workers) | frames/s | scratch MiB | accuracy | in budget | accurate |\n\
             |---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|"
        );
        let mut rows: Vec<&PointOutcome> = o.points.iter().filter(|p| p.spec.stage == stage).collect();
        rows.sort_by(|a, b| {
            a.spec.settings_label().cmp(&b.spec.settings_label()).then(a.wall_median_s.total_cmp(&b.wall_median_s))
        });
        for p in rows {
            if let Some(e) = &p.error {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | failed: {} | | | | | | | | |",
                    p.spec.settings_label(),
                    p.spec.backend(),
                    p.spec.env_label(),
                    e.replace('|', "\\|")
                );
                continue;
            }
            let (parent, workers) = (p.parent_peak_median_kib, p.workers_peak_median_kib);
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} ({:.0} + {:.0}) | {:.0} | {:.1} | {} | {} | {} |",
                p.spec.settings_label(),
                p.spec.backend(),
                p.spec.env_label(),
                p.wall_median_s,
                p.wall_min_s,
                p.cpu_median_s,
                p.peak_rss_median_kib as f64 / 1024.0,
                parent as f64 / 1024.0,
                workers as f64 / 1024.0,
                p.fps_median,
                p.scratch_bytes as f64 / (1 << 20) as f64,
                accuracy_label(&p.accuracy).unwrap_or_else(|| "–".into()),
                if p.within_budget { "yes" } else { "**no**" },
                match p.accurate {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "–",
                }
            );
        }
    }
    if !o.refused.is_empty() {
        let _ = writeln!(s, "\n## Refused points\n");
        for r in &o.refused {
            let _ = writeln!(s, "- `{}`: {}", r.point, r.why);
        }
    }
    if !figures.is_empty() {
        let _ = writeln!(s, "\n## Plots\n");
        for (f, caption) in figures {
            let _ = writeln!(s, "![{f}]({f})\n\n{caption}\n");
        }
    }
    s
}

/// Writes every output of `o` into `dir`.
///
/// # Errors
/// Unwritable files.
pub fn write_all(dir: &Path, o: &SweepOutcome) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write(dir, "points.csv", &points_csv(o))?;
    write(dir, "runs.csv", &runs_csv(o))?;
    write(dir, "sweep.json", &serde_json::to_string_pretty(o)?)?;
    let figures = plots(dir, o)?;
    if let Some(r) = &o.recommendation {
        write(dir, "recommended_params.json", &serde_json::to_string_pretty(&r.params)?)?;
        write(dir, "recommended_backend.txt", &format!("{}\n", r.backend))?;
        let env: String = r.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
        write(
            dir,
            "recommended.sh",
            &format!(
                "#!/bin/sh\n# Recommended by cargo xtask perf-sweep on {} ({} cores), {}.\n{env}exec caiman pipeline \"$@\" \
                 --params \"$(dirname \"$0\")/recommended_params.json\" --backend {}\n",
                o.meta.host, o.meta.cores, o.meta.started_utc, r.backend
            ),
        )?;
    }
    write(dir, "report.md", &markdown(o, &figures))?;
    Ok(())
}
