//! Tests of `caiman_cnmf::params` against CaImAn 1.12.1's parameter objects
//! (`test_data/params/`, copied from `shared/reference/params/` and `shared/reference/cnmf/`).
#![allow(clippy::print_stderr)]

use caiman_cnmf::params::{
    CnmfParams, GROUP_NAMES, MethodDeconvolution, MethodInit, NdArray, ParamsError, PerAxis, caiman_datadir,
};
use caiman_motion::params::normalize_nonfinite_tokens;
use proptest::prelude::*;
use serde_json::Value;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/test_data/params");

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{DATA}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Parses CaImAn JSON (with Python's `Infinity` tokens) into a value.
fn parse(json: &str) -> Value {
    serde_json::from_str(&normalize_nonfinite_tokens(json)).unwrap()
}

/// Keys whose values are machine-dependent in CaImAn's output (version, build, data directory).
const MACHINE_KEYS: [(&str, &str); 3] =
    [("data", "caiman_version"), ("data", "last_commit"), ("online", "path_to_model")];

/// Our value with the data directory replaced by `<CAIMAN_DATA>` as in the reference files.
fn ours(p: &CnmfParams) -> Value {
    let mut v = parse(&p.to_caiman_json());
    let dir = caiman_datadir().to_string_lossy().into_owned();
    if let Some(Value::String(s)) = v.pointer_mut("/online/path_to_model")
        && let Some(rest) = s.strip_prefix(&dir)
    {
        *s = format!("<CAIMAN_DATA>{rest}");
    }
    v
}

/// JSON equality with numbers compared as f64 (CaImAn writes `30` where a float field writes
/// `30.0`); `rel` > 0 allows a relative tolerance for floats.
fn same(a: &Value, b: &Value, rel: f64) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= rel * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b, rel)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w, rel)))
        }
        _ => a == b,
    }
}

/// Compares two full parameter sets group by group and key by key; returns the differing
/// `group.key` names (sorted), ignoring `skip`. Floats must agree to `rel`, except
/// `online.thresh_fitness_raw` (computed, not copied), which may differ by [`THRESH_REL`].
fn diff_keys(ours: &Value, theirs: &Value, skip: &[(&str, &str)], rel: f64) -> Vec<String> {
    let mut out = Vec::new();
    let (o, t) = (ours.as_object().unwrap(), theirs.as_object().unwrap());
    let mut groups: Vec<&String> = o.keys().chain(t.keys()).collect();
    groups.sort();
    groups.dedup();
    for g in groups {
        let (Some(og), Some(tg)) = (o.get(g).and_then(Value::as_object), t.get(g).and_then(Value::as_object)) else {
            out.push(format!("{g} (group missing)"));
            continue;
        };
        let mut keys: Vec<&String> = og.keys().chain(tg.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            if skip.contains(&(g.as_str(), k.as_str())) {
                continue;
            }
            let rel = if (g.as_str(), k.as_str()) == ("online", "thresh_fitness_raw") { THRESH_REL } else { rel };
            match (og.get(k), tg.get(k)) {
                (Some(a), Some(b)) if same(a, b, rel) => {}
                (a, b) => out.push(format!("{g}.{k}: ours {a:?} vs CaImAn {b:?}")),
            }
        }
    }
    out
}

/// Tolerance on `thresh_fitness_raw = log_ndtr(-min_SNR) · N` against scipy: a few ulp
/// (`crate::stats::log_ndtr(-1)` is 1.5 ulp from scipy's; at −2.5 they agree to the bit).
const THRESH_REL: f64 = 4.0 * f64::EPSILON;

/// The `"key": ` names of a JSON text in document order.
fn key_order(json: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let b = json.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' {
            let start = i + 1;
            let mut j = start;
            while b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            let mut k = j + 1;
            while k < b.len() && b[k].is_ascii_whitespace() {
                k += 1;
            }
            if k < b.len() && b[k] == b':' {
                keys.push(json[start..j].to_owned());
            }
            i = j + 1;
        } else {
            i += 1;
        }
    }
    keys
}

// ------------------------------------------------------------------------------------------
// Defaults
// ------------------------------------------------------------------------------------------

#[test]
fn new_equals_caiman_default_json_key_by_key() {
    let reference = parse(&read("cnmf_params_default.json"));
    let p = CnmfParams::new();
    let d = diff_keys(&ours(&p), &reference, &MACHINE_KEYS[..2], 0.0);
    assert!(d.is_empty(), "differences: {d:#?}");
    // log_ndtr(-2.5) · 12 agrees with scipy to the last bit.
    assert_eq!(p.online.thresh_fitness_raw, Some(-60.97977932734429));
    // The machine-dependent keys: ours name this port.
    assert!(p.data.caiman_version.starts_with("caiman-rs "));
    assert!(p.data.last_commit.as_deref().is_some_and(|c| c.starts_with("caiman-rs-")));
    assert_eq!(reference["data"]["caiman_version"], "1.12.1");
    // Group sizes of the README.
    for (g, n) in [
        ("data", 8),
        ("init", 35),
        ("merging", 3),
        ("motion", 21),
        ("online", 42),
        ("patch", 15),
        ("preprocess", 11),
        ("ring_CNN", 13),
        ("quality", 10),
        ("spatial", 16),
        ("temporal", 15),
    ] {
        assert_eq!(p.group(g).unwrap().as_object().unwrap().len(), n, "group {g}");
    }
    assert!(p.group("nope").is_none());
    assert_eq!(p.online.max_comp_update_shape, f64::INFINITY);
    assert_eq!(p.online.num_times_comp_updated, f64::INFINITY);
}

#[test]
fn caiman_json_layout_matches_caiman() {
    let ours_json = CnmfParams::new().to_caiman_json();
    let reference = read("cnmf_params_default.json");
    // Same groups and keys in the same order.
    assert_eq!(key_order(&ours_json), key_order(&reference));
    let groups: Vec<String> = parse(&ours_json).as_object().unwrap().keys().cloned().collect();
    let mut expect: Vec<String> = GROUP_NAMES.iter().map(|s| s.to_string()).collect();
    expect.sort();
    assert_eq!(groups, expect);
    // Python's json.dumps: the bare Infinity token and ", " / ": " separators.
    assert!(ours_json.contains("\"max_comp_update_shape\": Infinity"));
    assert!(ours_json.contains("\"num_times_comp_updated\": Infinity"));
    assert!(ours_json.starts_with("{\"data\": {\"fnames\": null, \"dims\": null, \"fr\": 30.0, \"decay_time\": 0.4"));
    assert!(reference.contains("\"max_comp_update_shape\": Infinity"));
    // Not strict JSON (like CaImAn's), strict once the tokens are normalised.
    assert!(serde_json::from_str::<Value>(&ours_json).is_err());
}

#[test]
fn strict_json_matches_reference_strict_file() {
    let p = CnmfParams::new();
    let strict = p.to_strict_json();
    let v: Value = serde_json::from_str(&strict).expect("strict JSON");
    assert_eq!(v["online"]["max_comp_update_shape"], "Infinity");
    let mut v = v;
    let dir = caiman_datadir().to_string_lossy().into_owned();
    let path = v["online"]["path_to_model"].as_str().unwrap().replacen(&dir, "<CAIMAN_DATA>", 1);
    v["online"]["path_to_model"] = Value::String(path);
    let reference: Value = serde_json::from_str(&read("cnmf_params_default_strict.json")).unwrap();
    let d = diff_keys(&v, &reference, &MACHINE_KEYS[..2], 0.0);
    assert!(d.is_empty(), "differences: {d:#?}");
    assert_eq!(key_order(&strict), key_order(&read("cnmf_params_default_strict.json")));
}

/// `Default` is CaImAn's constructor state before the first `check_consistency()`: exactly the
/// derived keys differ from `new()`.
#[test]
fn default_differs_from_new_only_in_derived_keys() {
    let raw = CnmfParams::default();
    let d = diff_keys(&ours(&raw), &ours(&CnmfParams::new()), &[], 0.0);
    let names: Vec<&str> = d.iter().map(|s| s.split(':').next().unwrap()).collect();
    assert_eq!(
        names,
        ["data.last_commit", "init.gSiz", "online.N_samples_exceptionality", "online.thresh_fitness_raw"],
        "{d:#?}"
    );
    assert_eq!(raw.init.gsiz, None);
    assert_eq!(raw.online.n_samples_exceptionality, None);
    assert_eq!(raw.online.thresh_fitness_raw, None);
    // The accessors give the derived values without running consistency.
    assert_eq!(raw.gsiz(), vec![11, 11]);
    assert_eq!(raw.n_samples_exceptionality(), 12);
    assert_eq!(raw.thresh_fitness_raw(), -60.97977932734429);
}

#[test]
fn python_types_of_defaults() {
    // The Python types CaImAn had to convert (tuple, ndarray, slice, numpy ints) load back.
    let types: Value = serde_json::from_str(&read("cnmf_params_default_python_types.json")).unwrap();
    assert_eq!(types.as_object().unwrap().len(), 11);
    let p = CnmfParams::new();
    assert_eq!(p.spatial.expand_core.as_ref().unwrap().shape, vec![5, 5]);
    assert_eq!(
        p.spatial.expand_core.as_ref().unwrap().data,
        vec![0, 0, 1, 0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0]
    );
    assert_eq!(p.motion.indices.len(), 2);
    assert!(p.motion.indices.iter().all(|s| s.start.is_none() && s.stop.is_none() && s.step.is_none()));
    assert_eq!(p.init.sigma_smooth_snmf, vec![0.5; 3]);
}

// ------------------------------------------------------------------------------------------
// Loading CaImAn files
// ------------------------------------------------------------------------------------------

#[test]
fn default_files_load_to_new() {
    for name in ["cnmf_params_default.json", "cnmf_params_default_strict.json"] {
        let (p, warnings) = CnmfParams::from_caiman_json(&read(name)).unwrap();
        assert!(warnings.is_empty(), "{name}: {warnings:?}");
        let mut expect = CnmfParams::new();
        expect.data.caiman_version = "1.12.1".to_owned();
        expect.online.path_to_model = Some("<CAIMAN_DATA>/model/cnn_model_online.h5".to_owned());
        assert_eq!(p, expect, "{name}");
    }
}

const DEMOS: [&str; 7] = [
    "params_demo_OnACID.json",
    "params_demo_OnACID_mesoscope.json",
    "params_demo_caiman_basic_with_patches.json",
    "params_demo_caiman_basic_without_patches.json",
    "params_demo_pipeline.json",
    "params_demo_pipeline_NWB.json",
    "params_demo_pipeline_cnmfE.json",
];

#[test]
fn demo_files_load_like_caiman() {
    let full = parse(&read("demo_params_loaded_full.json"));
    assert_eq!(full.as_object().unwrap().len(), DEMOS.len());
    for name in DEMOS {
        let (p, warnings) = CnmfParams::from_caiman_json(&read(name)).unwrap();
        assert!(!warnings.iter().any(|w| w.contains("unknown") || w.contains("legacy")), "{name}: {warnings:?}");
        // Only the machine-dependent keys may differ; thresh_fitness_raw to THRESH_REL.
        let d = diff_keys(&ours(&p), &full[name], &MACHINE_KEYS[..2], 0.0);
        assert!(d.is_empty(), "{name}: {d:#?}");
    }
    // Spot checks of the derivations CaImAn applied.
    let (p, _) = CnmfParams::from_caiman_json(&read("params_demo_OnACID.json")).unwrap();
    assert_eq!((p.online.n_samples_exceptionality, p.init.gsiz.clone()), (Some(8), Some(vec![13, 13])));
    assert_eq!((p.spatial.nb, p.temporal.nb, p.temporal.p, p.preprocess.p), (2, 2, 2, 1));
    let (p, w) = CnmfParams::from_caiman_json(&read("params_demo_caiman_basic_with_patches.json")).unwrap();
    // rf = 10 ≤ gSiz = 13: CaImAn only warns.
    assert_eq!(p.patch.rf, Some(PerAxis::All(10)));
    assert!(w.iter().any(|w| w.contains("patch.rf")), "{w:?}");
    let (p, _) = CnmfParams::from_caiman_json(&read("params_demo_pipeline_cnmfE.json")).unwrap();
    assert_eq!(p.init.k, None);
    assert_eq!(p.init.method_init, MethodInit::CorrPnr);
    assert_eq!((p.patch.nb_patch, p.patch.low_rank_background), (0, None));
    assert_eq!(p.motion.gsig_filt, Some(vec![3, 3]));
}

#[test]
fn cnmf_fit_and_refit_params_load() {
    for name in ["cnmf_params_fit.json", "cnmf_params_refit.json"] {
        let text = read(name);
        let (p, warnings) = CnmfParams::from_caiman_json(&text).unwrap();
        assert!(!warnings.iter().any(|w| w.contains("unknown")), "{name}: {warnings:?}");
        let d = diff_keys(&ours(&p), &parse(&text), &MACHINE_KEYS[..2], 0.0);
        assert!(d.is_empty(), "{name}: {d:#?}");
        assert_eq!(p.data.dims, Some(vec![128, 128]));
        assert_eq!(p.online.movie_name_online, "cnmf/online_movie.mp4");
        let back = CnmfParams::from_caiman_json(&p.to_caiman_json()).unwrap().0;
        assert_eq!(back, p, "{name} round trip");
    }
}

/// `CNMFParams(params_dict=cnmf_params_input.json)` on the 1000-frame 128×128 movie gives
/// `cnmf_params_fit.json`.
#[test]
fn input_dict_derives_fit_params() {
    let (mut p, _) = CnmfParams::from_caiman_json(&read("cnmf_params_input.json")).unwrap();
    // dims and T come from the movie in CaImAn; here they are given.
    p.data.dims = Some(vec![128, 128]);
    p.check_consistency(Some(1000)).unwrap();
    let fit = parse(&read("cnmf_params_fit.json"));
    let d = diff_keys(&ours(&p), &fit, &MACHINE_KEYS[..2], 0.0);
    assert!(d.is_empty(), "{d:#?}");
    assert_eq!((p.motion.splits_rig, p.motion.splits_els), (12, 12));
}

/// Same derivation with the movie read from disk (skipped when the reference movie is absent).
#[test]
fn input_dict_with_movie_file() {
    let movie = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/reference/cnmf/cnmf_movie.tif");
    if !std::path::Path::new(movie).exists() {
        eprintln!("skipping: {movie} not found");
        return;
    }
    let input = read("cnmf_params_input.json").replace("cnmf/cnmf_movie.tif", movie);
    let (mut p, _) = CnmfParams::from_caiman_json(&input).unwrap();
    p.check_consistency_with_files().unwrap();
    assert_eq!(p.data.dims, Some(vec![128, 128]));
    assert_eq!((p.motion.splits_rig, p.motion.splits_els), (12, 12));
    let dir = std::path::Path::new(movie).parent().unwrap();
    assert_eq!(p.online.movie_name_online, dir.join("online_movie.mp4").to_string_lossy());
}

/// The toy test's params dict gives CaImAn's full params (`init_batch` and `n_processes` were
/// changed afterwards by `CNMF(...)`'s own arguments, not by the dict).
#[test]
fn toy_params_dict_derives_full_params() {
    let toy = parse(&read("toy_initonly_params.json"));
    let (p, warnings) = CnmfParams::from_caiman_json(&toy["params_dict"].to_string()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let skip = [MACHINE_KEYS[0], MACHINE_KEYS[1], ("online", "init_batch"), ("patch", "n_processes")];
    let d = diff_keys(&ours(&p), &toy["full"], &skip, 0.0);
    assert!(d.is_empty(), "{d:#?}");
}

// ------------------------------------------------------------------------------------------
// Round trips
// ------------------------------------------------------------------------------------------

#[test]
fn round_trip_is_identity() {
    let mut sets = vec![CnmfParams::new()];
    for name in DEMOS {
        sets.push(CnmfParams::from_caiman_json(&read(name)).unwrap().0);
    }
    for p in sets {
        for json in [p.to_caiman_json(), p.to_strict_json()] {
            let (q, _) = CnmfParams::from_caiman_json(&json).unwrap();
            assert_eq!(q, p);
            assert_eq!(q.to_caiman_json(), p.to_caiman_json());
        }
    }
}

fn arb_params() -> impl Strategy<Value = CnmfParams> {
    (
        (0.5f64..200.0, 0.01f64..5.0, 0.0f64..1.0, 0.1f64..8.0, 1usize..100),
        (prop::option::of(1usize..200), 1.0f64..12.0, -1i64..4, 0usize..3, 1usize..20),
        (prop::option::of((5usize..60, 1usize..20)), any::<bool>(), 1.0f64..4.0, 0usize..30),
    )
        .prop_map(|((fr, decay, merge, min_snr, k), (nfs, gsig, nb, p, ssub), (patch, pw, ds, shifts))| {
            let mut q = CnmfParams::default();
            q.data.fr = fr;
            q.data.decay_time = decay;
            q.merging.merge_thr = merge;
            q.online.min_snr = min_snr;
            q.quality.min_snr = min_snr;
            q.init.k = Some(k);
            q.motion.num_frames_split = nfs.unwrap_or(80);
            q.init.gsig = Some(vec![gsig, gsig + 1.0]);
            q.init.nb = nb;
            q.preprocess.p = p;
            q.temporal.p = p;
            q.init.ssub = ssub;
            if let Some((rf, stride)) = patch {
                q.patch.rf = Some(PerAxis::All(rf));
                q.patch.stride = Some(PerAxis::Each(vec![stride, stride + 1]));
            }
            q.motion.pw_rigid = pw;
            q.online.ds_factor = ds;
            q.online.max_shifts_online = shifts;
            q.check_consistency(None).unwrap();
            q
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn prop_round_trip(p in arb_params()) {
        let json = p.to_caiman_json();
        let (q, _) = CnmfParams::from_caiman_json(&json).unwrap();
        prop_assert_eq!(&q, &p);
        // Consistency is idempotent.
        let mut r = q.clone();
        r.check_consistency(None).unwrap();
        prop_assert_eq!(&r, &p);
        // Independent checks of the derivations.
        prop_assert_eq!(p.online.n_samples_exceptionality, Some((p.data.fr * p.data.decay_time).ceil() as usize));
        prop_assert!(p.init.gsiz.as_ref().unwrap().iter().all(|g| g % 2 != 0));
        prop_assert_eq!(p.max_shifts_online(), (p.online.max_shifts_online as f64 / p.online.ds_factor) as usize);
    }
}

// ------------------------------------------------------------------------------------------
// Warnings and errors
// ------------------------------------------------------------------------------------------

#[test]
fn unknown_and_flat_keys_give_warnings() {
    let json = r#"{
        "init": {"K": 7, "bogus_key": 1},
        "not_a_param": 3,
        "p": 1,
        "min_SNR": 3.5,
        "nb": 2,
        "ring_CNN": true,
        "noise_method": "median"
    }"#;
    let (p, w) = CnmfParams::from_caiman_json(json).unwrap();
    assert_eq!(p.init.k, Some(7));
    assert!(w.iter().any(|w| w.contains("`init.bogus_key`")), "{w:?}");
    assert!(w.iter().any(|w| w.contains("`not_a_param`")), "{w:?}");
    // Flat keys go into every group that has them (CaImAn's legacy behaviour) ...
    assert_eq!((p.preprocess.p, p.temporal.p), (1, 1));
    assert_eq!((p.quality.min_snr, p.online.min_snr), (3.5, 3.5));
    assert!(w.iter().any(|w| w.contains("legacy flat key `p`")));
    // ... `nb` into init only, then consistency copies it.
    assert_eq!((p.init.nb, p.spatial.nb, p.temporal.nb), (2, 2, 2));
    // A group name with a non-object value is the flat key of another group.
    assert!(p.online.ring_cnn);
    assert_eq!(p.ring_cnn, CnmfParams::new().ring_cnn);
    assert_eq!(p.preprocess.noise_method, caiman_cnmf::params::NoiseMethod::Median);
    assert_eq!(p.temporal.noise_method, caiman_cnmf::params::NoiseMethod::Median);
    // Derived from the new min_SNR.
    assert_eq!(p.online.thresh_fitness_raw, Some(caiman_cnmf::stats::log_ndtr(-3.5) * 12.0));
}

#[track_caller]
fn check_err(json: &str, key: &str, wrong_type: bool) {
    let err = CnmfParams::from_caiman_json(json).expect_err(json);
    assert_eq!(err.key(), key, "{json}: {err}");
    match (&err, wrong_type) {
        (ParamsError::WrongType { .. }, true) | (ParamsError::Invalid { .. }, false) => {}
        _ => panic!("{json}: unexpected error kind {err:?}"),
    }
    assert!(err.to_string().contains(key), "{err}");
    // Converts into the crate error.
    let e: caiman_cnmf::Error = err.into();
    assert!(matches!(e, caiman_cnmf::Error::InvalidParam(_)));
}

#[test]
fn wrong_types_are_typed_errors_naming_the_key() {
    check_err(r#"{"init": {"K": "many"}}"#, "init.K", true);
    check_err(r#"{"data": {"fr": "fast"}}"#, "data.fr", true);
    check_err(r#"{"data": {"fr": null}}"#, "data.fr", true);
    check_err(r#"{"motion": {"max_shifts": "x"}}"#, "motion.max_shifts", true);
    check_err(r#"{"patch": {"rf": "big"}}"#, "patch.rf", true);
    check_err(r#"{"online": {"max_comp_update_shape": "lots"}}"#, "online.max_comp_update_shape", true);
    check_err(r#"{"spatial": {"se": [[1, 1], [1]]}}"#, "spatial.se", true);
    check_err(r#"{"merging": {"do_merge": 1}}"#, "merging.do_merge", true);
    check_err(r#"{"data": 5}"#, "data", true);
    // A flat key with a wrong type names the group it was copied into.
    check_err(r#"{"rval_thr": "high"}"#, "online.rval_thr", true);
    let e = CnmfParams::from_caiman_json("{not json").unwrap_err();
    assert!(matches!(e, ParamsError::Syntax(_)));
    assert!(matches!(CnmfParams::from_caiman_json("[1, 2]").unwrap_err(), ParamsError::Syntax(_)));
}

#[test]
fn invalid_values_are_typed_errors_naming_the_key() {
    check_err(r#"{"init": {"K": -1}}"#, "init.K", false);
    check_err(r#"{"init": {"method_init": "local_NMF"}}"#, "init.method_init", false);
    check_err(r#"{"temporal": {"method_deconvolution": "magic"}}"#, "temporal.method_deconvolution", false);
    check_err(r#"{"merging": {"merge_thr": 1.5}}"#, "merging.merge_thr", false);
    check_err(r#"{"preprocess": {"p": 3}}"#, "preprocess.p", false);
    check_err(r#"{"temporal": {"p": 5}}"#, "temporal.p", false);
    check_err(r#"{"data": {"decay_time": 0}}"#, "data.decay_time", false);
    check_err(r#"{"data": {"fr": -30}}"#, "data.fr", false);
    check_err(r#"{"init": {"gSig": [0, 4]}}"#, "init.gSig", false);
    check_err(r#"{"init": {"ssub": 0}}"#, "init.ssub", false);
    check_err(r#"{"init": {"nb": -2}}"#, "init.nb", false);
    check_err(r#"{"temporal": {"noise_range": [0.5, 0.25]}}"#, "temporal.noise_range", false);
    check_err(r#"{"temporal": {"fudge_factor": 1.2}}"#, "temporal.fudge_factor", false);
    check_err(r#"{"quality": {"min_cnn_thr": 2}}"#, "quality.min_cnn_thr", false);
    check_err(r#"{"spatial": {"nrgthr": 0}}"#, "spatial.nrgthr", false);
    check_err(r#"{"online": {"ds_factor": 0}}"#, "online.ds_factor", false);
    check_err(r#"{"online": {"init_batch": 0}}"#, "online.init_batch", false);
    check_err(r#"{"online": {"max_comp_update_shape": "NaN"}}"#, "online.max_comp_update_shape", false);
    check_err(r#"{"patch": {"rf": 0}}"#, "patch.rf", false);
    check_err(r#"{"motion": {"strides": [0, 96]}}"#, "motion.strides", false);
    check_err(r#"{"motion": {"is3D": true, "strides": [96, 50]}}"#, "motion.strides", false);
    check_err(r#"{"motion": {"border_nan": "max"}}"#, "motion.border_nan", true);
}

#[test]
fn failed_change_leaves_params_unchanged() {
    let mut p = CnmfParams::new();
    let before = p.clone();
    let err = p.change_params(&serde_json::json!({"init": {"K": 5}, "merging": {"merge_thr": 7}})).unwrap_err();
    assert_eq!(err.key(), "merging.merge_thr");
    assert_eq!(p, before);
    p.change_params(&serde_json::json!({"init": {"K": 5}})).unwrap();
    assert_eq!(p.init.k, Some(5));
}

// ------------------------------------------------------------------------------------------
// check_consistency derivations
// ------------------------------------------------------------------------------------------

fn load(json: Value) -> (CnmfParams, Vec<String>) {
    CnmfParams::from_caiman_json(&json.to_string()).unwrap()
}

#[test]
fn n_samples_and_thresh_fitness_raw() {
    // CaImAn's values (demo_params_loaded_full.json): (fr, decay, min_SNR) → (N, thresh).
    for (fr, decay, snr, n, thresh) in [
        (30.0, 0.4, 2.5, 12, -60.97977932734429),
        (10.0, 0.75, 1.0, 8, -14.728173160074112),
        (10.0, 5.0, 2.5, 50, -254.08241386393456),
        (15.0, 0.4, 2.5, 6, -30.489889663672145),
        (10.0, 0.4, 2.5, 4, -20.326593109114764),
        (30.0, 0.5, 2.5, 15, -76.22472415918037),
    ] {
        let (p, _) = load(serde_json::json!({"data": {"fr": fr, "decay_time": decay}, "online": {"min_SNR": snr}}));
        assert_eq!(p.online.n_samples_exceptionality, Some(n), "fr {fr} decay {decay}");
        let t = p.online.thresh_fitness_raw.unwrap();
        assert!((t - thresh).abs() <= THRESH_REL * thresh.abs(), "{t} vs {thresh}");
    }
    // ceil, not round: 7.3 · 0.5 = 3.65 → 4.
    let (p, _) = load(serde_json::json!({"data": {"fr": 7.3, "decay_time": 0.5}}));
    assert_eq!(p.online.n_samples_exceptionality, Some(4));
    // Given values are kept.
    let (p, _) = load(serde_json::json!({"online": {"N_samples_exceptionality": 3, "thresh_fitness_raw": -7.5}}));
    assert_eq!((p.online.n_samples_exceptionality, p.online.thresh_fitness_raw), (Some(3), Some(-7.5)));
}

#[test]
fn splits_from_frames() {
    let mut p = CnmfParams::new();
    p.check_consistency(Some(1000)).unwrap();
    assert_eq!(p.motion.splits_rig, 14, "without fnames nothing is derived");
    p.data.fnames = Some(vec!["m.tif".to_owned()]);
    for (frames, nfs, splits) in [(1000, 80, 12), (1000, 5, 100), (5, 80, 1), (2000, 100, 20)] {
        p.motion.num_frames_split = nfs;
        p.check_consistency(Some(frames)).unwrap();
        assert_eq!((p.motion.splits_rig, p.motion.splits_els), (splits, splits), "T {frames} nfs {nfs}");
    }
    // A bare movie name next to a file without a directory stays bare.
    assert_eq!(p.online.movie_name_online, "online_movie.mp4");
    // fnames given as one string is a one-element list.
    let (p, _) = load(serde_json::json!({"data": {"fnames": "dir/sub/movie.h5"}}));
    assert_eq!(p.data.fnames, Some(vec!["dir/sub/movie.h5".to_owned()]));
    assert_eq!(p.online.movie_name_online, "dir/sub/online_movie.mp4");
}

#[test]
fn movie_name_online_is_moved_once() {
    let (mut p, _) = load(serde_json::json!({"data": {"fnames": ["a/b.tif"]}}));
    assert_eq!(p.online.movie_name_online, "a/online_movie.mp4");
    p.check_consistency(None).unwrap();
    p.change_params(&serde_json::json!({"init": {"K": 3}})).unwrap();
    // CaImAn would now hold a/a/a/online_movie.mp4 ([Q], fixed).
    assert_eq!(p.online.movie_name_online, "a/online_movie.mp4");
}

#[test]
fn max_shifts_online_is_divided_once() {
    let (mut p, _) = load(serde_json::json!({"online": {"ds_factor": 2, "max_shifts_online": 10}}));
    assert_eq!((p.online.max_shifts_online, p.max_shifts_online()), (10, 5));
    // CaImAn divides again on every change_params (10 → 5 → 2); fixed here.
    p.change_params(&serde_json::json!({"init": {"K": 3}})).unwrap();
    p.change_params(&serde_json::json!({"init": {"K": 4}})).unwrap();
    assert_eq!(p.max_shifts_online(), 5);
    let (p, _) = load(serde_json::json!({"online": {"ds_factor": 3, "max_shifts_online": 10}}));
    assert_eq!(p.max_shifts_online(), 3);
    let (p, _) = load(serde_json::json!({"online": {"ds_factor": 1.5, "max_shifts_online": 10}}));
    assert_eq!(p.max_shifts_online(), 6);
    assert_eq!(CnmfParams::new().max_shifts_online(), 10);
}

#[test]
fn gsig_gsiz_rules() {
    let (p, _) = load(serde_json::json!({"init": {"gSig": null}}));
    assert_eq!((p.init.gsig.clone(), p.init.gsiz.clone()), (Some(vec![-1.0, -1.0]), Some(vec![-1, -1])));
    let (p, _) = load(serde_json::json!({"init": {"gSig": [4, 4]}}));
    assert_eq!(p.init.gsiz, Some(vec![9, 9]));
    let (p, _) = load(serde_json::json!({"init": {"gSig": [4, 4], "gSiz": [12, 13]}}));
    assert_eq!(p.init.gsiz, Some(vec![13, 13]));
    let (p, _) = load(serde_json::json!({"init": {"gSig": [2.5, 3]}}));
    assert_eq!(p.init.gsiz, Some(vec![7, 7]));
    let (p, _) = load(serde_json::json!({"init": {"gSig": [3, 3, 2]}}));
    assert_eq!(p.init.gsiz, Some(vec![7, 7, 5]));
}

#[test]
fn rf_not_larger_than_gsiz_only_warns() {
    let (p, w) = load(serde_json::json!({"patch": {"rf": [10, 40], "stride": 4}, "init": {"gSig": [6, 6]}}));
    assert_eq!(p.patch.rf, Some(PerAxis::Each(vec![10, 40])));
    assert_eq!(p.patch.rf.as_ref().unwrap().get(1), 40);
    assert!(w.iter().any(|w| w.contains("patch.rf")), "{w:?}");
    let (_, w) = load(serde_json::json!({"patch": {"rf": 20}, "init": {"gSig": [6, 6]}}));
    assert!(!w.iter().any(|w| w.contains("patch.rf")), "{w:?}");
}

#[test]
fn nb_rules() {
    let (p, w) = load(serde_json::json!({"init": {"nb": 0}}));
    assert_eq!((p.patch.nb_patch, p.patch.low_rank_background), (0, None));
    assert_eq!((p.spatial.nb, p.temporal.nb), (0, 0));
    assert!(p.spatial.update_background_components);
    assert!(w.iter().any(|w| w.contains("nb_patch")), "{w:?}");
    let (p, w) = load(serde_json::json!({"init": {"nb": -1}}));
    assert_eq!((p.patch.nb_patch, p.patch.low_rank_background), (-1, None));
    assert!(!p.spatial.update_background_components);
    assert!(w.iter().any(|w| w.contains("update_background_components")), "{w:?}");
    // nb may only be set under init.
    let (p, w) = load(serde_json::json!({"init": {"nb": 3}, "spatial": {"nb": 1}, "temporal": {"nb": 5}}));
    assert_eq!((p.init.nb, p.spatial.nb, p.temporal.nb), (3, 3, 3));
    assert_eq!(w.iter().filter(|w| w.contains("replaced by init.nb")).count(), 2, "{w:?}");
    assert_eq!(p.patch.low_rank_background, Some(true));
}

#[test]
fn corr_pnr_turns_off_normalize_init() {
    let (p, w) = load(serde_json::json!({"init": {"method_init": "corr_pnr"}}));
    assert!(!p.init.normalize_init);
    assert!(w.iter().any(|w| w.contains("normalize_init")));
    let (p, _) = load(serde_json::json!({"init": {"method_init": "corr_pnr", "ring_size_factor": null}}));
    assert!(p.init.normalize_init);
    let (p, _) = load(serde_json::json!({"init": {"method_init": "greedy_roi"}}));
    assert!(p.init.normalize_init);
}

#[test]
fn update_num_comps_rule() {
    for key in ["max_num_added", "min_num_trial"] {
        let (p, w) = load(serde_json::json!({"online": {key: 0}}));
        assert!(!p.online.update_num_comps, "{key}");
        assert!(w.iter().any(|w| w.contains(key)), "{w:?}");
    }
    let (p, _) = load(serde_json::json!({"online": {"max_num_added": 1, "min_num_trial": 1}}));
    assert!(p.online.update_num_comps);
}

#[test]
fn is3d_expansion() {
    let (p, w) = load(serde_json::json!({"motion": {"is3D": true, "max_shifts": [4, 4], "strides": [48, 48, 8]}}));
    assert_eq!(p.motion.max_shifts, vec![4, 4, 4]);
    assert_eq!(p.motion.strides, vec![48, 48, 8]);
    assert_eq!(p.motion.overlaps, vec![32, 32, 32]);
    assert_eq!(p.motion.indices.len(), 3);
    assert_eq!(w.iter().filter(|w| w.contains("is3D")).count(), 3, "{w:?}");
    // 2-D keeps two entries.
    assert_eq!(CnmfParams::new().motion.max_shifts, vec![6, 6]);
}

#[test]
fn decay_time_zero_rejected_by_check_consistency() {
    let mut p = CnmfParams::new();
    p.data.decay_time = 0.0;
    let e = p.check_consistency(None).unwrap_err();
    assert_eq!(e.key(), "data.decay_time");
    assert_eq!(p.validate().unwrap_err().key(), "data.decay_time");
}

#[test]
fn validate_accepts_defaults_and_rejects_direct_nonsense() {
    CnmfParams::new().validate().unwrap();
    CnmfParams::default().validate().unwrap();
    let mut p = CnmfParams::new();
    p.merging.merge_thr = -0.1;
    assert_eq!(p.validate().unwrap_err().key(), "merging.merge_thr");
    let mut p = CnmfParams::new();
    p.temporal.p = 3;
    assert_eq!(p.validate().unwrap_err().key(), "temporal.p");
    let mut p = CnmfParams::new();
    p.data.fr = f64::NAN;
    assert_eq!(p.validate().unwrap_err().key(), "data.fr");
    let mut p = CnmfParams::new();
    p.data.dims = Some(vec![0, 5]);
    assert_eq!(p.validate().unwrap_err().key(), "data.dims");
}

// ------------------------------------------------------------------------------------------
// Value forms
// ------------------------------------------------------------------------------------------

#[test]
fn flexible_value_forms() {
    let (p, _) = load(serde_json::json!({
        "temporal": {"optimize_g": true, "method_deconvolution": "cvxpy"},
        "spatial": {"se": [[[1, 1], [1, 1]], [[1, 0], [0, 1]]], "expandCore": null, "medw": [3, 3]},
        "init": {"kernel": [[0.5, 1.0], [1.5, 2.0]]},
        "online": {"max_comp_update_shape": 200, "num_times_comp_updated": "Infinity"}
    }));
    assert_eq!(p.temporal.optimize_g, 1);
    assert_eq!(p.temporal.method_deconvolution, MethodDeconvolution::Cvxpy);
    assert_eq!(p.spatial.se, Some(NdArray { shape: vec![2, 2, 2], data: vec![1, 1, 1, 1, 1, 0, 0, 1] }));
    assert_eq!(p.spatial.expand_core, None);
    assert_eq!(p.init.kernel, Some(NdArray::from_rows(&[&[0.5, 1.0], &[1.5, 2.0]])));
    assert_eq!(p.online.max_comp_update_shape, 200.0);
    assert_eq!(p.online.num_times_comp_updated, f64::INFINITY);
    let v = parse(&p.to_caiman_json());
    assert_eq!(v["spatial"]["se"], serde_json::json!([[[1, 1], [1, 1]], [[1, 0], [0, 1]]]));
    assert_eq!(v["temporal"]["optimize_g"], serde_json::json!(1));
    assert_eq!(CnmfParams::from_caiman_json(&p.to_caiman_json()).unwrap().0, p);
    // optimize_g = 0 is written as CaImAn's `false`.
    assert_eq!(parse(&CnmfParams::new().to_caiman_json())["temporal"]["optimize_g"], Value::Bool(false));
}
