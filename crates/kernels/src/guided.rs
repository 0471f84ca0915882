//! A parallel loop over `0..n` in contiguous runs that threads claim from a shared counter as
//! they go (guided self-scheduling): each claim takes a share of what is left, so early claims
//! are long (a thread streams one run of weight rows and its prefetches stay useful) and the
//! last ones are single indices (threads finish within one index of each other).
//!
//! Written here rather than taken from rayon's parallel iterators: their splits are fixed by
//! the time a leaf starts, so a pass over a decode step's ~400-6400 row bands ended with one
//! thread idle for 50-170 us while the other finished its last split, and the bands had to be
//! collected into a Vec first (10-20 us per product batch, serial).

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Calls `body(&mut state, run)` for disjoint runs covering `0..n`, on every thread of the current
/// rayon pool (the calling thread included when it is one of the pool's); `init` makes each
/// participating thread's `state` once, on its first run.
pub fn for_runs<S>(
    n: usize,
    init: impl Fn() -> S + Sync,
    body: impl Fn(&mut S, Range<usize>) + Sync,
) {
    let threads = rayon::current_num_threads().max(1);
    let next = AtomicUsize::new(0);
    let work = || {
        let mut state: Option<S> = None;
        while let Some(run) = claim(&next, n, threads) {
            body(state.get_or_insert_with(&init), run);
        }
    };
    if threads == 1 || n <= 1 {
        work();
        return;
    }
    // From a worker, `scope` runs here at once and the spawned copies wait on this thread's
    // deque for the others to steal; one left unstolen finds nothing to claim and returns.
    rayon::scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| work());
        }
        work();
    });
}

/// The next run: a 1 / (2 * threads) share of what is left, at least one index.
fn claim(next: &AtomicUsize, n: usize, threads: usize) -> Option<Range<usize>> {
    let mut start = next.load(Ordering::Relaxed);
    loop {
        if start >= n {
            return None;
        }
        let end = start + ((n - start) / (2 * threads)).max(1);
        match next.compare_exchange_weak(start, end, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some(start..end),
            Err(now) => start = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn runs_cover_every_index_once_on_any_pool() {
        for threads in [1, 2, 3, 5] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for n in [0, 1, 2, 7, 64, 1000, 6400] {
                let seen = Mutex::new(vec![0u32; n]);
                let inits = AtomicUsize::new(0);
                pool.install(|| {
                    for_runs(
                        n,
                        || inits.fetch_add(1, Ordering::Relaxed),
                        |_, run| {
                            assert!(!run.is_empty() && run.end <= n);
                            let mut s = seen.lock().unwrap();
                            run.for_each(|i| s[i] += 1);
                        },
                    )
                });
                assert!(seen.into_inner().unwrap().iter().all(|&c| c == 1));
                assert!(inits.into_inner() <= threads);
            }
        }
    }

    #[test]
    fn claims_shrink_to_single_indices() {
        let next = AtomicUsize::new(0);
        let runs: Vec<_> = std::iter::from_fn(|| claim(&next, 100, 2)).collect();
        assert_eq!(runs[0], 0..25);
        assert!(runs.windows(2).all(|w| w[0].end == w[1].start));
        assert!(runs.windows(2).all(|w| w[0].len() >= w[1].len()));
        assert_eq!(runs.last().unwrap().len(), 1);
        assert_eq!(runs.last().unwrap().end, 100);
    }
}
