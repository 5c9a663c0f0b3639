//! CaImAn's `RingBuffer`: the last `n` frames of a stream in one fixed allocation.

/// A fixed number of frames of `d` values; pushing overwrites the oldest.
#[derive(Clone, Debug)]
pub(crate) struct Ring {
    d: usize,
    n: usize,
    data: Vec<f32>,
    /// Slot of the oldest frame, i.e. the next one to be overwritten.
    cur: usize,
}

impl Ring {
    /// A ring filled with `frames` (`n` frames of `d` values, oldest first).
    pub(crate) fn from_frames(d: usize, n: usize, frames: Vec<f32>) -> Self {
        debug_assert_eq!(frames.len(), d * n);
        Ring { d, n, data: frames, cur: 0 }
    }

    /// Number of frames held.
    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// Overwrites the oldest frame with `frame` (which becomes the newest).
    pub(crate) fn push(&mut self, frame: &[f32]) {
        let d = self.d;
        self.data[self.cur * d..(self.cur + 1) * d].copy_from_slice(frame);
        self.cur = (self.cur + 1) % self.n;
    }

    /// The slot the next push overwrites (holding the oldest frame), to be filled in place and
    /// then committed with [`Ring::advance`].
    pub(crate) fn oldest_mut(&mut self) -> &mut [f32] {
        let d = self.d;
        &mut self.data[self.cur * d..(self.cur + 1) * d]
    }

    /// The slot the next push overwrites (mutable) and the frame that will be the oldest after
    /// it (`n ≥ 2`).
    pub(crate) fn slot_and_next(&mut self) -> (&mut [f32], &[f32]) {
        let d = self.d;
        let (cur, next) = (self.cur, (self.cur + 1) % self.n);
        if next > cur {
            let (a, b) = self.data.split_at_mut(next * d);
            (&mut a[cur * d..], &b[..d])
        } else {
            let (a, b) = self.data.split_at_mut(cur * d);
            (&mut b[..d], &a[next * d..(next + 1) * d])
        }
    }

    /// Commits the slot filled through [`Ring::oldest_mut`] or [`Ring::slot_and_next`] as the
    /// newest frame.
    pub(crate) fn advance(&mut self) {
        self.cur = (self.cur + 1) % self.n;
    }

    /// The `i`-th frame in time order (`0` = oldest, `len − 1` = newest).
    pub(crate) fn chrono(&self, i: usize) -> &[f32] {
        let s = (self.cur + i) % self.n;
        &self.data[s * self.d..(s + 1) * self.d]
    }

    /// The `i`-th frame in time order, mutable.
    pub(crate) fn chrono_mut(&mut self, i: usize) -> &mut [f32] {
        let s = (self.cur + i) % self.n;
        &mut self.data[s * self.d..(s + 1) * self.d]
    }

    /// The frame `k` places before the newest (`0` = newest).
    pub(crate) fn back(&self, k: usize) -> &[f32] {
        self.chrono(self.n - 1 - k)
    }

    /// The oldest frame (CaImAn `get_first`).
    #[cfg(test)]
    pub(crate) fn oldest(&self) -> &[f32] {
        self.chrono(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_time_order_as_caimans_ring_buffer() {
        let mut r = Ring::from_frames(2, 3, vec![0., 0., 1., 1., 2., 2.]);
        assert_eq!(r.oldest(), &[0., 0.]);
        r.push(&[3., 3.]);
        assert_eq!(r.oldest(), &[1., 1.]);
        assert_eq!(r.back(0), &[3., 3.]);
        assert_eq!(r.back(2), &[1., 1.]);
        r.push(&[4., 4.]);
        r.push(&[5., 5.]);
        r.push(&[6., 6.]);
        let order: Vec<f32> = (0..r.len()).map(|i| r.chrono(i)[0]).collect();
        assert_eq!(order, vec![4., 5., 6.]);
        r.chrono_mut(0)[1] = 9.;
        assert_eq!(r.oldest(), &[4., 9.]);
        for _ in 0..3 {
            let (slot, next) = r.slot_and_next();
            let (old, nx) = (slot[0], next[0]);
            slot.copy_from_slice(&[old + 3.0, old + 3.0]);
            r.advance();
            assert_eq!(r.oldest()[0], nx);
            assert_eq!(r.back(0)[0], old + 3.0);
        }
        r.oldest_mut().fill(1.0);
        r.advance();
        assert_eq!(r.back(0), &[1., 1.]);
    }
}
