//! Inner (intra-task) parallelism: the [`Par`] value kernels receive, and the helpers that run
//! their parallel loops within it.
//!
//! Kernels never start threads themselves. They take a `par: Par` argument (faer style) and use
//! [`Par::for_each_chunk_mut`], [`Par::map_indices`] or [`Par::install`]. With `Par::Threads(n)`
//! those run on a small rayon pool of exactly `n` threads that belongs to the calling thread
//! (one pool per executor worker, built on first use and reused), so `workers × n` threads is the
//! most a map ever uses. Inside that pool, nested calls run sequentially instead of starting
//! another pool.
//!
//! Results of the helpers do not depend on the degree: every chunk or index is computed by the
//! same code, and results come back in index order.

use std::cell::{Cell, RefCell};
use std::num::NonZeroUsize;
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// How many threads a kernel may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Par {
    /// One thread: the caller's.
    #[default]
    Seq,
    /// Up to this many threads (the caller's thread plus helpers in its inner pool).
    Threads(NonZeroUsize),
}

impl Par {
    /// `Seq` for `n ≤ 1`, else `Threads(n)`.
    pub fn new(n: usize) -> Self {
        match NonZeroUsize::new(n) {
            Some(n) if n.get() > 1 => Par::Threads(n),
            _ => Par::Seq,
        }
    }

    /// The number of threads (1 for `Seq`).
    pub fn degree(self) -> usize {
        match self {
            Par::Seq => 1,
            Par::Threads(n) => n.get(),
        }
    }

    /// Whether this is `Seq`.
    pub fn is_seq(self) -> bool {
        self == Par::Seq
    }

    /// Runs `f` with this parallelism: for `Threads(n)`, inside the calling thread's inner rayon
    /// pool of `n` threads, so that rayon parallel iterators in `f` (and libraries that follow
    /// rayon's current pool, such as faer with `faer::Par::rayon(n)`) use at most `n` threads.
    /// For `Seq`, or when already inside an inner pool, `f` simply runs in the calling thread.
    pub fn install<R: Send>(self, f: impl FnOnce() -> R + Send) -> R {
        match self.inner_pool() {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }

    /// Calls `f(chunk_index, chunk)` on consecutive chunks of `chunk_len` elements of `data`
    /// (the last may be shorter), using up to `degree()` threads.
    ///
    /// # Panics
    /// If `chunk_len == 0`.
    #[track_caller]
    pub fn for_each_chunk_mut<T, F>(self, data: &mut [T], chunk_len: usize, f: F)
    where
        T: Send,
        F: Fn(usize, &mut [T]) + Sync + Send,
    {
        assert!(chunk_len > 0, "chunk_len must be positive");
        match self.inner_pool() {
            Some(pool) => pool.install(|| {
                data.par_chunks_mut(chunk_len).enumerate().for_each(|(i, c)| f(i, c));
            }),
            None => data.chunks_mut(chunk_len).enumerate().for_each(|(i, c)| f(i, c)),
        }
    }

    /// Computes `f(i)` for `i in 0..n` using up to `degree()` threads; results in index order.
    pub fn map_indices<R, F>(self, n: usize, f: F) -> Vec<R>
    where
        R: Send,
        F: Fn(usize) -> R + Sync + Send,
    {
        match self.inner_pool() {
            Some(pool) => pool.install(|| (0..n).into_par_iter().map(&f).collect()),
            None => (0..n).map(f).collect(),
        }
    }

    /// The calling thread's inner pool for this degree, or `None` when work should run inline.
    fn inner_pool(self) -> Option<Arc<rayon::ThreadPool>> {
        let n = self.degree();
        if n <= 1 || IN_INNER_POOL.with(Cell::get) {
            return None;
        }
        INNER_POOL.with(|slot| {
            let mut slot = slot.borrow_mut();
            if let Some(pool) = slot.as_ref().filter(|p| p.current_num_threads() == n) {
                return Some(Arc::clone(pool));
            }
            // Drop an old pool of another size before building the new one.
            *slot = None;
            match rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("caiman-inner-{i}"))
                .start_handler(|_| IN_INNER_POOL.with(|f| f.set(true)))
                .build()
            {
                Ok(pool) => {
                    let pool = Arc::new(pool);
                    *slot = Some(Arc::clone(&pool));
                    Some(pool)
                }
                Err(e) => {
                    tracing::warn!(threads = n, error = %e, "could not build inner pool; running sequentially");
                    None
                }
            }
        })
    }
}

thread_local! {
    /// This thread's inner pool (one per executor worker thread), built on first use.
    static INNER_POOL: RefCell<Option<Arc<rayon::ThreadPool>>> = const { RefCell::new(None) };
    /// Set on the threads of inner pools: nested parallel helpers run inline there.
    static IN_INNER_POOL: Cell<bool> = const { Cell::new(false) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    #[test]
    fn new_and_degree() {
        assert_eq!(Par::new(0), Par::Seq);
        assert_eq!(Par::new(1), Par::Seq);
        assert_eq!(Par::new(3).degree(), 3);
        assert!(Par::Seq.is_seq());
    }

    #[test]
    fn helpers_give_the_same_result_at_every_degree() {
        let reference: Vec<u64> = Par::Seq.map_indices(1000, |i| (i as u64).pow(2));
        for n in [1, 2, 3] {
            assert_eq!(Par::new(n).map_indices(1000, |i| (i as u64).pow(2)), reference);
            let mut data = vec![0u64; 1001];
            Par::new(n).for_each_chunk_mut(&mut data, 7, |c, chunk| {
                for (j, x) in chunk.iter_mut().enumerate() {
                    *x = ((c * 7 + j) as u64).pow(2);
                }
            });
            assert_eq!(&data[..1000], &reference[..]);
        }
    }

    #[test]
    fn threads_stay_within_the_degree_even_when_nested() {
        let names = Mutex::new(HashSet::new());
        Par::new(2).for_each_chunk_mut(&mut [0u8; 64], 1, |_, _| {
            // Nested use runs inline on the inner pool's thread.
            Par::new(4).map_indices(4, |_| {
                names.lock().unwrap().insert(std::thread::current().name().map(String::from));
            });
        });
        let names = names.into_inner().unwrap();
        assert!(names.len() <= 2, "{names:?}");
        assert!(names.iter().all(|n| n.as_deref().is_some_and(|n| n.starts_with("caiman-inner-"))));
    }

    #[test]
    fn install_runs_inside_a_pool_of_the_right_size() {
        assert_eq!(Par::new(3).install(rayon::current_num_threads), 3);
        assert_eq!(Par::Seq.install(|| 42), 42);
    }
}
