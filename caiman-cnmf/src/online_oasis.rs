//! Incremental (online) OASIS deconvolution: CaImAn's `oasis.pyx::OASIS` class, the per-neuron
//! deconvolver that OnACID feeds one sample per frame (catalog §5.4, §8.4).
//!
//! [`OnlineOasis`] keeps the active set of the pool-adjacent-violators algorithm as a list of
//! [`Pool`]s and solves, for every prefix `y_0..y_t` of the stream,
//!
//! ```text
//! min_c ½‖c − (y − b − λ(1 − Σg))‖²   s.t.   s_t = c_t − g₁c_{t−1} − g₂c_{t−2} ∈ {0} ∪ [s_min, ∞)
//! ```
//!
//! * **AR(1)** (`g2 == 0`): a pool `(v, w, t, l)` has value `v / w` at its start `t` and decays as
//!   `(v / w)·g^k` for `k < l`. A new sample enters as the pool `v = y − b − λ(1 − g)`, `w = 1`,
//!   `l = 1`; while the previous pool violates `(v_{i−1}/w_{i−1})·g^{l_{i−1}} + s_min > v_i/w_i`
//!   the two merge (`v ← v_{i−1} + g^{l_{i−1}} v_i`, `w ← w_{i−1} + g^{2l_{i−1}} w_i`). Note that
//!   CaImAn's online class, unlike its batch `oasisAR1`, uses `λ(1 − g)` for the last sample too
//!   (there is no "last sample" in a stream), so it solves the λ = 0 problem on shifted data.
//! * **AR(2)** (`g2 != 0`, roots `d ≥ r`): a pool stores its first value `v` and its last value
//!   `w`; inside pool `j > 0`, `c_{t_j + k} = h_k v_j + g₂ h_{k−1} w_{j−1}` with the AR(2) impulse
//!   response `h` (`h_0 = 1`, `h_k = g₁h_{k−1} + g₂h_{k−2}`). The first pool decays as `v₀ d^k`.
//!   Merged pools are re-fitted by least squares (CaImAn's `g11g11` / `g11g12` tables).
//!
//! `num_empty_samples = n > 0` starts the stream with one pool of `n` zero samples (value 0), as
//! OnACID does for components added mid-stream.
//!
//! For AR(1) with `s_min = 0` every state is the exact optimum of the problem above for the samples
//! seen so far (a non-negative least-squares problem in the spikes; negative pools are clipped to
//! 0 in [`OnlineOasis::c`]). The AR(2) algorithm is CaImAn's greedy one: a re-fitted pool never
//! revisits earlier pools, so its result is feasible but in general not the exact optimum (on
//! noisy data the residual is typically a few per cent above it; noiseless data are recovered
//! exactly). `s_min > 0` is CaImAn's heuristic hard threshold for both orders.
//!
//! [`fit_traces`] fits one instance per trace (OnACID's initialisation on the first batch)
//! through a `caiman-parallel` executor.
//!
//! Deliberate deviations from CaImAn:
//! * Arithmetic is `f64` throughout (CaImAn stores pools and kernels as `float32`). Against the
//!   CaImAn 1.12.1 reference runs the results agree to float32 rounding (see
//!   `tests/online_oasis.rs` for the measured differences).
//! * \[Q\] CaImAn truncates its kernel tables (`h`, `g12`, `g11g11`, `g11g12`) at 1000 samples: c is
//!   set to 0 beyond sample 1000 of a pool (AR(1) and AR(2)), an AR(2) pool longer than 1000 is
//!   re-fitted on its first 1000 samples only and its end value `w` is taken at sample 999 (not at
//!   its end), and the AR(2) violation test / spike size use an asymptotic approximation for such
//!   pools. **Fixed here**: there are no tables. Each AR(2) pool carries its own sufficient
//!   statistics (`Σ h_j y_j`, `Σ h_{j−1} y_j`, `Σ d^j y_j`, `Σ h_j²`, `Σ h_j h_{j−1}`,
//!   `Σ h_{j−1}²`, `h_{l−1}`, `h_{l−2}`, `d^l`), which are combined exactly on a merge with the
//!   companion-matrix identity `h_{a+j} = h_a h_j + g₂ h_{a−1} h_{j−1}`; kernel values at an
//!   arbitrary offset come from a 2×2 matrix power (`O(log k)`). Merges therefore cost `O(1)`
//!   instead of `O(min(l, 1000))`, no raw-sample history is kept, and pools of any length are
//!   exact. Results equal CaImAn's (up to rounding) whenever no pool but the first reaches 1000
//!   samples, in particular for every trace of at most 1000 samples (as the reference runs).
//! * CaImAn's AR(2) `fit_next_tmp` reads a non-existent attribute (`self._yt`) when the tentative
//!   pool merges into the first pool (a Python `AttributeError`); here the tentative sample is used,
//!   as intended. `fit_next_tmp` shares the merge code with `fit_next`, so a tentative update
//!   returns exactly what `fit_next` followed by `get_c` would.
//! * Asking for more samples than were fitted (`get_c(num)` / `fit_next_tmp(y, num)` with
//!   `num > t`) reads out of bounds in CaImAn; here the samples before time 0 are 0.
//! * Bad parameters (AR(1) `g ∉ (0, 1)`, AR(2) with complex roots, `d ≥ 1` or `g₁ ≤ 0`, negative
//!   or non-finite `s_min`, non-finite `λ`, `b`) are rejected by the constructor, and non-finite
//!   samples by [`OnlineOasis::fit_next`] (the state is left unchanged), with typed [`Error`]s.
//!   CaImAn silently produces NaN kernels for such parameters.
//!
//! Kept from CaImAn on purpose: [`OnlineOasis::c`] clips negative AR(1) pool values at 0 but
//! [`OnlineOasis::get_c_of_last_pool`] does not (OnACID writes the latter into `C_on`); AR(2)
//! values are never clipped (except the first pool's value, which is clipped when fitted);
//! [`OnlineOasis::s`] is the unclipped jump at each pool start and `s_0 = 0`.

use caiman_parallel::{Executor, Registry, Task, TaskCtx, TaskError};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, task_err};

/// Parameters of an [`OnlineOasis`] deconvolver (the arguments of CaImAn's `OASIS(...)`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OnlineOasisParams {
    /// AR coefficient `g₁` (the decay factor for AR(1)).
    pub g: f64,
    /// Second AR coefficient `g₂`; `0` selects AR(1).
    pub g2: f64,
    /// Sparsity penalty λ (enters as the data shift `λ(1 − g₁ − g₂)`).
    pub lam: f64,
    /// Minimal spike size (`s_t` is either 0 or at least `s_min`); `>= 0`.
    pub s_min: f64,
    /// Baseline subtracted from every sample.
    pub b: f64,
}

impl OnlineOasisParams {
    /// AR(1) parameters with decay `g` and `λ = s_min = b = 0`.
    pub fn ar1(g: f64) -> Self {
        OnlineOasisParams { g, g2: 0.0, lam: 0.0, s_min: 0.0, b: 0.0 }
    }

    /// AR(2) parameters `(g1, g2)` with `λ = s_min = b = 0`.
    pub fn ar2(g1: f64, g2: f64) -> Self {
        OnlineOasisParams { g: g1, g2, lam: 0.0, s_min: 0.0, b: 0.0 }
    }

    /// Checks the parameters and returns the AR roots `(d, r)` (`(g, 0)` for AR(1)).
    fn roots(&self) -> Result<(f64, f64)> {
        let OnlineOasisParams { g, g2, lam, s_min, b } = *self;
        for (name, x) in [("g", g), ("g2", g2), ("lam", lam), ("s_min", s_min), ("b", b)] {
            if !x.is_finite() {
                return Err(Error::InvalidParam(format!("OASIS {name} must be finite, got {x}")));
            }
        }
        if s_min < 0.0 {
            return Err(Error::InvalidParam(format!("OASIS s_min must be >= 0, got {s_min}")));
        }
        if g2 == 0.0 {
            if !(g > 0.0 && g < 1.0) {
                return Err(Error::InvalidParam(format!("OASIS AR(1) coefficient g must lie in (0, 1), got {g}")));
            }
            return Ok((g, 0.0));
        }
        let disc = g * g + 4.0 * g2;
        if disc < 0.0 {
            return Err(Error::InvalidParam(format!(
                "OASIS AR(2) coefficients (g1, g2) = ({g}, {g2}) have complex roots"
            )));
        }
        let sq = disc.sqrt();
        let (d, r) = ((g + sq) / 2.0, (g - sq) / 2.0);
        if !(g > 0.0 && d < 1.0) {
            return Err(Error::InvalidParam(format!(
                "OASIS AR(2) coefficients (g1, g2) = ({g}, {g2}) need g1 > 0 and roots |r| <= d < 1, got d = {d}, r = {r}"
            )));
        }
        Ok((d, r))
    }
}

/// One pool of the active set.
///
/// AR(1): value `v / w` at time `t`, decaying by `g` per sample over `l` samples. AR(2): `v` is the
/// first and `w` the last denoised value of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    /// AR(1): weighted sum of the (shifted) data; AR(2): first value of the pool.
    pub v: f64,
    /// AR(1): sum of the squared kernel weights; AR(2): last value of the pool.
    pub w: f64,
    /// Start time (sample index) of the pool.
    pub t: usize,
    /// Length of the pool in samples (`>= 1`).
    pub l: usize,
}

/// Sufficient statistics of one AR(2) pool of length `l` starting at `t` (shifted data `y`):
/// data sums `s0 = Σ h_j y_{t+j}`, `s1 = Σ h_{j−1} y_{t+j}`, `f = Σ d^j y_{t+j}` and kernel
/// quantities `q0 = Σ h_j²`, `q1 = Σ h_j h_{j−1}`, `p = Σ h_{j−1}²`, `h1 = h_{l−1}`,
/// `h2 = h_{l−2}`, `dl = d^l` (sums over `j < l`, `h_{−1} = 0`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Ar2Stats {
    s0: f64,
    s1: f64,
    f: f64,
    q0: f64,
    q1: f64,
    p: f64,
    h1: f64,
    h2: f64,
    dl: f64,
}

/// Incremental OASIS deconvolver for one trace (CaImAn's `OASIS` class); see the module docs.
///
/// Memory grows with the number of pools (one per inferred spike plus the pool being built); no
/// allocation happens per sample except amortised `Vec` growth.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineOasis {
    params: OnlineOasisParams,
    /// Larger AR root (`g` for AR(1)).
    d: f64,
    /// Number of samples fitted (including empty samples).
    t: usize,
    pools: Vec<Pool>,
    /// One entry per pool for AR(2), empty for AR(1).
    ar2: Vec<Ar2Stats>,
}

/// `x^n` for a count `n`.
fn powu(x: f64, n: usize) -> f64 {
    match i32::try_from(n) {
        Ok(n) => x.powi(n),
        Err(_) => x.powf(n as f64),
    }
}

impl OnlineOasis {
    /// A deconvolver with parameters `params` whose stream starts with `num_empty_samples` zero
    /// samples in one pool (CaImAn `OASIS(g, lam, s_min, b, num_empty_samples, g2)`).
    ///
    /// # Errors
    /// [`Error::InvalidParam`] for non-finite parameters, `s_min < 0`, an AR(1) `g` outside
    /// `(0, 1)`, or AR(2) coefficients without real roots `|r| <= d < 1` (`g1 > 0`).
    pub fn new(params: OnlineOasisParams, num_empty_samples: usize) -> Result<Self> {
        let (d, _) = params.roots()?;
        let mut o = OnlineOasis { params, d, t: 0, pools: Vec::new(), ar2: Vec::new() };
        if num_empty_samples > 0 {
            let n = num_empty_samples;
            if o.is_ar2() {
                o.pools.push(Pool { v: 0.0, w: 0.0, t: 0, l: n });
                o.ar2.push(o.zero_stats(n));
            } else {
                let g = params.g;
                let w = (1.0 - powu(g, 2 * n)) / (1.0 - g * g);
                o.pools.push(Pool { v: 0.0, w, t: 0, l: n });
            }
            o.t = n;
        }
        Ok(o)
    }

    /// The parameters.
    pub fn params(&self) -> &OnlineOasisParams {
        &self.params
    }

    /// First AR coefficient `g₁` (the decay factor for AR(1)).
    pub fn g(&self) -> f64 {
        self.params.g
    }

    /// Second AR coefficient (`0` for AR(1)).
    pub fn g2(&self) -> f64 {
        self.params.g2
    }

    /// Sparsity penalty λ.
    pub fn lam(&self) -> f64 {
        self.params.lam
    }

    /// Baseline.
    pub fn b(&self) -> f64 {
        self.params.b
    }

    /// Minimal spike size.
    pub fn s_min(&self) -> f64 {
        self.params.s_min
    }

    /// Number of samples processed (including the empty samples given to the constructor).
    pub fn t(&self) -> usize {
        self.t
    }

    /// Whether this is an AR(2) deconvolver (`g2 != 0`).
    pub fn is_ar2(&self) -> bool {
        self.params.g2 != 0.0
    }

    /// The pools of the active set, in time order (CaImAn's `P` property).
    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    /// Shifted sample `y − b − λ(1 − g₁ − g₂)`.
    fn shifted(&self, y: f64) -> f64 {
        let p = &self.params;
        y - p.b - p.lam * (1.0 - p.g - p.g2)
    }

    // ----- AR(2) kernel algebra -------------------------------------------------------------

    /// `(h_k, h_{k−1})` of the AR(2) impulse response (`h_{−1} = 0`), by a 2×2 matrix power.
    fn kernel_pair(&self, k: usize) -> (f64, f64) {
        let (g1, g2) = (self.params.g, self.params.g2);
        // M^k = [[h_k, g2 h_{k-1}], [h_{k-1}, g2 h_{k-2}]] for M = [[g1, g2], [1, 0]].
        let mul = |a: [f64; 4], b: [f64; 4]| {
            [a[0] * b[0] + a[1] * b[2], a[0] * b[1] + a[1] * b[3], a[2] * b[0] + a[3] * b[2], a[2] * b[1] + a[3] * b[3]]
        };
        let mut result = [1.0, 0.0, 0.0, 1.0];
        let mut base = [g1, g2, 1.0, 0.0];
        let mut n = k;
        while n > 0 {
            if n & 1 == 1 {
                result = mul(result, base);
            }
            n >>= 1;
            if n > 0 {
                base = mul(base, base);
            }
        }
        (result[0], result[2])
    }

    /// Statistics of a one-sample AR(2) pool holding shifted sample `y`.
    fn unit_stats(&self, y: f64) -> Ar2Stats {
        Ar2Stats { s0: y, s1: 0.0, f: y, q0: 1.0, q1: 0.0, p: 0.0, h1: 1.0, h2: 0.0, dl: self.d }
    }

    /// Statistics of pool `a` followed by pool `b` (exact, via `h_{a+j} = h_a h_j + g₂ h_{a−1} h_{j−1}`).
    fn merge_stats(&self, a: &Ar2Stats, b: &Ar2Stats) -> Ar2Stats {
        let (g1, g2) = (self.params.g, self.params.g2);
        let ha = g1 * a.h1 + g2 * a.h2; // h_la
        let ha1 = a.h1; // h_{la-1}
        let ha2 = a.h2; // h_{la-2}
        Ar2Stats {
            s0: a.s0 + ha * b.s0 + g2 * ha1 * b.s1,
            s1: a.s1 + ha1 * b.s0 + g2 * ha2 * b.s1,
            f: a.f + a.dl * b.f,
            q0: a.q0 + ha * ha * b.q0 + 2.0 * g2 * ha * ha1 * b.q1 + g2 * g2 * ha1 * ha1 * b.p,
            q1: a.q1 + ha * ha1 * b.q0 + g2 * (ha * ha2 + ha1 * ha1) * b.q1 + g2 * g2 * ha1 * ha2 * b.p,
            p: a.p + ha1 * ha1 * b.q0 + 2.0 * g2 * ha1 * ha2 * b.q1 + g2 * g2 * ha2 * ha2 * b.p,
            h1: ha * b.h1 + g2 * ha1 * b.h2,
            h2: ha1 * b.h1 + g2 * ha2 * b.h2,
            dl: a.dl * b.dl,
        }
    }

    /// Statistics of a pool of `n >= 1` zero samples (binary composition of unit pools).
    fn zero_stats(&self, n: usize) -> Ar2Stats {
        let mut acc: Option<Ar2Stats> = None;
        let mut base = self.unit_stats(0.0);
        let mut k = n;
        while k > 0 {
            if k & 1 == 1 {
                acc = Some(match acc {
                    None => base,
                    Some(a) => self.merge_stats(&a, &base),
                });
            }
            k >>= 1;
            if k > 0 {
                base = self.merge_stats(&base, &base);
            }
        }
        acc.unwrap_or(base)
    }

    /// AR(2): the value pool `j` (with statistics `st`) predicts for the sample after its end.
    fn ar2_next_value(&self, j: usize, pool: &Pool, st: &Ar2Stats) -> f64 {
        if j == 0 {
            pool.w * self.d
        } else {
            let (g1, g2) = (self.params.g, self.params.g2);
            (g1 * st.h1 + g2 * st.h2) * pool.v + g2 * st.h1 * self.pools[j - 1].w
        }
    }

    // ----- pool merging ---------------------------------------------------------------------

    /// Merges the new (shifted) sample `yv` backwards into the committed pools without changing
    /// them. Returns the resulting last pool, its AR(2) statistics, and how many committed pools
    /// stay in front of it.
    fn tentative(&self, yv: f64) -> (Pool, Option<Ar2Stats>, usize) {
        let s_min = self.params.s_min;
        let mut keep = self.pools.len();
        if !self.is_ar2() {
            let g = self.params.g;
            let mut np = Pool { v: yv, w: 1.0, t: self.t, l: 1 };
            while keep > 0 {
                let p = &self.pools[keep - 1];
                let gl = powu(g, p.l);
                if p.v / p.w * gl + s_min <= np.v / np.w {
                    break;
                }
                np = Pool { v: p.v + np.v * gl, w: p.w + np.w * gl * gl, t: p.t, l: p.l + np.l };
                keep -= 1;
            }
            return (np, None, keep);
        }
        let v0 = yv.max(0.0);
        let mut np = Pool { v: v0, w: v0, t: self.t, l: 1 };
        let mut st = self.unit_stats(yv);
        while keep > 0 {
            let j = keep - 1;
            let (p, pst) = (&self.pools[j], &self.ar2[j]);
            if self.ar2_next_value(j, p, pst) <= np.v - s_min {
                break;
            }
            st = self.merge_stats(pst, &st);
            let l = p.l + np.l;
            let (v, w) = if j > 0 {
                let g2 = self.params.g2;
                let wp = self.pools[j - 1].w;
                let v = (st.s0 - g2 * st.q1 * wp) / st.q0;
                (v, st.h1 * v + g2 * st.h2 * wp)
            } else {
                let d = self.d;
                let v = (st.f * (1.0 - d * d) / (1.0 - st.dl * st.dl)).max(0.0);
                (v, st.dl / d * v)
            };
            np = Pool { v, w, t: p.t, l };
            keep -= 1;
        }
        (np, Some(st), keep)
    }

    /// Adds sample `y` and updates the pools (CaImAn `fit_next`).
    ///
    /// # Errors
    /// [`Error::NonFinite`] if `y` is NaN or infinite; the state is then unchanged.
    pub fn fit_next(&mut self, y: f64) -> Result<()> {
        if !y.is_finite() {
            return Err(Error::NonFinite { what: "OASIS sample" });
        }
        self.push(y);
        Ok(())
    }

    fn push(&mut self, y: f64) {
        let (np, st, keep) = self.tentative(self.shifted(y));
        self.pools.truncate(keep);
        self.pools.push(np);
        if let Some(st) = st {
            self.ar2.truncate(keep);
            self.ar2.push(st);
        }
        self.t += 1;
    }

    /// Adds all samples of `ys` in order (CaImAn `fit`).
    ///
    /// # Errors
    /// [`Error::NonFinite`] if any sample is NaN or infinite; nothing is fitted then.
    pub fn fit(&mut self, ys: &[f64]) -> Result<()> {
        if ys.iter().any(|y| !y.is_finite()) {
            return Err(Error::NonFinite { what: "OASIS samples" });
        }
        for &y in ys {
            self.push(y);
        }
        Ok(())
    }

    /// Denoised calcium of the last `num` samples as if `y` were added, without changing the state
    /// (CaImAn `fit_next_tmp`): the returned values include the tentative sample as the last entry,
    /// i.e. they cover times `t + 1 − num ..= t`.
    ///
    /// # Errors
    /// [`Error::NonFinite`] if `y` is NaN or infinite.
    pub fn fit_next_tmp(&self, y: f64, num: usize) -> Result<Vec<f64>> {
        let mut out = vec![0.0; num];
        self.fit_next_tmp_into(y, &mut out)?;
        Ok(out)
    }

    /// [`OnlineOasis::fit_next_tmp`] writing the last `out.len()` values into `out`.
    ///
    /// # Errors
    /// [`Error::NonFinite`] if `y` is NaN or infinite.
    pub fn fit_next_tmp_into(&self, y: f64, out: &mut [f64]) -> Result<()> {
        if !y.is_finite() {
            return Err(Error::NonFinite { what: "OASIS sample" });
        }
        let (np, _, keep) = self.tentative(self.shifted(y));
        self.fill_tail(Some(&np), keep, out);
        Ok(())
    }

    // ----- reconstruction -------------------------------------------------------------------

    /// Writes `c` of pool `pool` (virtual index `j`, previous pool's end value `prev_w`) at pool
    /// offsets `k0 .. k0 + out.len()`. `clip` clips negative AR(1) values at 0.
    fn fill_pool(&self, pool: &Pool, j: usize, prev_w: f64, k0: usize, clip: bool, out: &mut [f64]) {
        if out.is_empty() {
            return;
        }
        // Values are re-anchored every `ANCHOR` samples (power / matrix power at the exact
        // offset), so that rounding does not accumulate along long pools.
        const ANCHOR: usize = 256;
        if !self.is_ar2() || j == 0 {
            let (decay, value) = if self.is_ar2() {
                (self.d, pool.v)
            } else if clip {
                (self.params.g, pool.v.max(0.0) / pool.w)
            } else {
                (self.params.g, pool.v / pool.w)
            };
            for (i, chunk) in out.chunks_mut(ANCHOR).enumerate() {
                let mut x = value * powu(decay, k0 + i * ANCHOR);
                for o in chunk {
                    *o = x;
                    x *= decay;
                }
            }
        } else {
            let (g1, g2) = (self.params.g, self.params.g2);
            let (v, wp) = (pool.v, prev_w);
            for (i, chunk) in out.chunks_mut(ANCHOR).enumerate() {
                let (mut h, mut hm1) = self.kernel_pair(k0 + i * ANCHOR);
                for o in chunk {
                    *o = h * v + g2 * hm1 * wp;
                    let hn = g1 * h + g2 * hm1;
                    hm1 = h;
                    h = hn;
                }
            }
        }
    }

    /// Fills `out` with the last `out.len()` values of `c` over the committed pools `..keep`
    /// followed by `extra` (if any); values before time 0 are 0.
    fn fill_tail(&self, extra: Option<&Pool>, keep: usize, out: &mut [f64]) {
        let n_virtual = keep + usize::from(extra.is_some());
        let pool_at = |j: usize| match extra {
            Some(e) if j == keep => e,
            _ => &self.pools[j],
        };
        let mut rem = out.len();
        let mut j = n_virtual;
        while rem > 0 && j > 0 {
            j -= 1;
            let pool = pool_at(j);
            let prev_w = if j > 0 { pool_at(j - 1).w } else { 0.0 };
            let take = pool.l.min(rem);
            self.fill_pool(pool, j, prev_w, pool.l - take, true, &mut out[rem - take..rem]);
            rem -= take;
        }
        out[..rem].fill(0.0);
    }

    /// Denoised calcium of the last `num` samples (CaImAn `get_c`); entries before time 0 are 0.
    pub fn get_c(&self, num: usize) -> Vec<f64> {
        let mut out = vec![0.0; num];
        self.get_c_into(&mut out);
        out
    }

    /// [`OnlineOasis::get_c`] writing the last `out.len()` values into `out`.
    pub fn get_c_into(&self, out: &mut [f64]) {
        self.fill_tail(None, self.pools.len(), out);
    }

    /// The full denoised calcium trace, length [`OnlineOasis::t`] (CaImAn property `c`).
    pub fn c(&self) -> Vec<f64> {
        self.get_c(self.t)
    }

    /// The full deconvolved activity, length [`OnlineOasis::t`] (CaImAn property `s`): the jump at
    /// the start of every pool but the first, unclipped; 0 elsewhere.
    pub fn s(&self) -> Vec<f64> {
        let mut s = vec![0.0; self.t];
        for j in 1..self.pools.len() {
            s[self.pools[j].t] = self.spike_at_pool(j);
        }
        s
    }

    /// Deconvolved activity of the last `num` samples (CaImAn `get_s`); entries before time 0 are 0.
    pub fn get_s(&self, num: usize) -> Vec<f64> {
        let mut out = vec![0.0; num];
        let start = self.t.saturating_sub(num);
        let offset = num.saturating_sub(self.t);
        for j in (1..self.pools.len()).rev() {
            let t = self.pools[j].t;
            if t < start {
                break;
            }
            out[offset + t - start] = self.spike_at_pool(j);
        }
        out
    }

    /// Jump at the start of pool `j >= 1`.
    fn spike_at_pool(&self, j: usize) -> f64 {
        let (p, q) = (&self.pools[j], &self.pools[j - 1]);
        if self.is_ar2() {
            p.v - self.ar2_next_value(j - 1, q, &self.ar2[j - 1])
        } else {
            p.v / p.w - q.v / q.w * powu(self.params.g, q.l)
        }
    }

    /// Length of the last pool (CaImAn `get_l_of_last_pool`); 0 when nothing has been fitted.
    pub fn get_l_of_last_pool(&self) -> usize {
        self.pools.last().map_or(0, |p| p.l)
    }

    /// Length of the pool `idx_from_end` places before the last one (CaImAn `get_l_of_pool`).
    pub fn get_l_of_pool(&self, idx_from_end: usize) -> Option<usize> {
        let n = self.pools.len();
        (idx_from_end < n).then(|| self.pools[n - 1 - idx_from_end].l)
    }

    /// Denoised calcium over the last pool, i.e. the part of `c` the last update changed (CaImAn
    /// `get_c_of_last_pool`; AR(1) values are *not* clipped at 0, as in CaImAn). Empty when
    /// nothing has been fitted.
    pub fn get_c_of_last_pool(&self) -> Vec<f64> {
        let mut out = Vec::new();
        self.get_c_of_last_pool_into(&mut out);
        out
    }

    /// [`OnlineOasis::get_c_of_last_pool`] into a reused buffer (cleared first).
    pub fn get_c_of_last_pool_into(&self, out: &mut Vec<f64>) {
        out.clear();
        let Some(last) = self.pools.last() else { return };
        let j = self.pools.len() - 1;
        let prev_w = if j > 0 { self.pools[j - 1].w } else { 0.0 };
        out.resize(last.l, 0.0);
        self.fill_pool(last, j, prev_w, 0, false, out);
    }

    /// Removes the last pool and its samples (CaImAn `remove_last_pool`).
    ///
    /// # Errors
    /// [`Error::Empty`] when there is no pool.
    pub fn remove_last_pool(&mut self) -> Result<()> {
        let last = self.pools.pop().ok_or(Error::Empty { what: "OASIS pools" })?;
        self.ar2.truncate(self.pools.len());
        self.t -= last.l;
        Ok(())
    }

    /// Sets the value `v` of the pool `idx_from_end` places before the last one (CaImAn
    /// `set_poolvalue`; AR(1): the weighted sum `v`, whose value is `v / w`; AR(2): the first
    /// value of the pool). Other pool fields are not updated, as in CaImAn.
    ///
    /// # Errors
    /// [`Error::InvalidParam`] if there is no such pool or `val` is not finite.
    pub fn set_poolvalue(&mut self, val: f64, idx_from_end: usize) -> Result<()> {
        if !val.is_finite() {
            return Err(Error::InvalidParam(format!("OASIS pool value must be finite, got {val}")));
        }
        let n = self.pools.len();
        if idx_from_end >= n {
            return Err(Error::InvalidParam(format!(
                "OASIS pool index {idx_from_end} from the end, but only {n} pools"
            )));
        }
        self.pools[n - 1 - idx_from_end].v = val;
        Ok(())
    }
}

// ----- many traces through the executor ----------------------------------------------------

/// One trace to deconvolve with a fresh [`OnlineOasis`] (for [`fit_traces`]): OnACID fits one
/// instance per neuron on the initial batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceFit {
    /// Parameters of the deconvolver.
    pub params: OnlineOasisParams,
    /// Zero samples the stream starts with.
    pub num_empty_samples: usize,
    /// The samples, fitted in order.
    pub y: Vec<f64>,
}

/// A chunk of traces fitted by one task.
#[derive(Serialize, Deserialize)]
struct OnlineOasisFitTask {
    jobs: Vec<TraceFit>,
}

impl Task for OnlineOasisFitTask {
    const NAME: &'static str = "caiman_cnmf.online_oasis_fit";
    type Output = Vec<OnlineOasis>;

    fn run(self, _ctx: &TaskCtx) -> std::result::Result<Vec<OnlineOasis>, TaskError> {
        self.jobs.into_iter().map(|job| fit_one(&job).map_err(task_err)).collect()
    }
}

fn fit_one(job: &TraceFit) -> Result<OnlineOasis> {
    let mut o = OnlineOasis::new(job.params, job.num_empty_samples)?;
    o.pools.reserve(job.y.len() / 8);
    o.fit(&job.y)?;
    Ok(o)
}

/// Registers this module's task types (the OnACID initialisation fit of [`fit_traces`]).
pub fn register_tasks(r: Registry) -> Registry {
    r.register::<OnlineOasisFitTask>()
}

/// Fits one fresh [`OnlineOasis`] per entry of `jobs` (all samples in order), spread over `exec`;
/// the results are in input order.
///
/// # Errors
/// [`Error::InvalidParam`] / [`Error::NonFinite`] for a job with bad parameters or samples
/// (checked before anything runs), [`Error::Exec`] if the executor fails.
pub fn fit_traces<E: Executor>(exec: &E, jobs: Vec<TraceFit>) -> Result<Vec<OnlineOasis>> {
    for job in &jobs {
        job.params.roots()?;
        if job.y.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite { what: "OASIS samples" });
        }
    }
    let n = jobs.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    // a few chunks per worker, balanced by sample count
    let total: usize = jobs.iter().map(|j| j.y.len() + 1).sum();
    let n_chunks = (4 * exec.workers().max(1)).min(n);
    let target = total.div_ceil(n_chunks);
    let mut tasks = Vec::with_capacity(n_chunks);
    let mut chunk = Vec::new();
    let mut size = 0;
    for job in jobs {
        size += job.y.len() + 1;
        chunk.push(job);
        if size >= target {
            tasks.push(OnlineOasisFitTask { jobs: std::mem::take(&mut chunk) });
            size = 0;
        }
    }
    if !chunk.is_empty() {
        tasks.push(OnlineOasisFitTask { jobs: chunk });
    }
    let (outputs, _stats) = exec.map(tasks)?;
    Ok(outputs.into_iter().flatten().collect())
}

// ----- serde ------------------------------------------------------------------------------

/// Serialised form of [`OnlineOasis`] (borrowed for writing).
#[derive(Serialize)]
struct StateRef<'a> {
    params: &'a OnlineOasisParams,
    t: usize,
    pools: &'a [Pool],
    ar2: &'a [Ar2Stats],
}

/// Serialised form of [`OnlineOasis`] (owned for reading; validated by `TryFrom`).
#[derive(Deserialize)]
struct State {
    params: OnlineOasisParams,
    t: usize,
    pools: Vec<Pool>,
    ar2: Vec<Ar2Stats>,
}

impl Serialize for OnlineOasis {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        StateRef { params: &self.params, t: self.t, pools: &self.pools, ar2: &self.ar2 }.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for OnlineOasis {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let state = State::deserialize(deserializer)?;
        OnlineOasis::try_from(state).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<State> for OnlineOasis {
    type Error = Error;

    fn try_from(s: State) -> Result<Self> {
        let (d, _) = s.params.roots()?;
        let ar2 = s.params.g2 != 0.0;
        let bad = |m: &str| Err(Error::InvalidParam(format!("inconsistent OASIS state: {m}")));
        if s.ar2.len() != if ar2 { s.pools.len() } else { 0 } {
            return bad("AR(2) statistics do not match the pools");
        }
        let mut next = 0usize;
        for p in &s.pools {
            if p.t != next || p.l == 0 {
                return bad("pools are not contiguous");
            }
            if !(p.v.is_finite() && p.w.is_finite()) || (!ar2 && p.w <= 0.0) {
                return bad("pool values");
            }
            next = p.t + p.l;
        }
        if next != s.t {
            return bad("pool lengths do not add up to t");
        }
        let finite = |a: &Ar2Stats| [a.s0, a.s1, a.f, a.q0, a.q1, a.p, a.h1, a.h2, a.dl].iter().all(|x| x.is_finite());
        if !s.ar2.iter().all(|a| finite(a) && a.q0 > 0.0) {
            return bad("AR(2) statistics");
        }
        Ok(OnlineOasis { params: s.params, d, t: s.t, pools: s.pools, ar2: s.ar2 })
    }
}
