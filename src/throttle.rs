//! I/O limits for business hours (`[migration] max_bytes_per_sec`,
//! `max_files_per_sec`): one token bucket per rate, shared by every copy
//! worker of the process, so the daemon's parallel jobs together stay
//! within what the host's disks are meant to give the migration. A file
//! takes its bytes and one file; a bucket may go into debt, so a message
//! larger than the bucket passes (its taker waits the longer) instead of
//! waiting forever. No limit means no `Throttle` at all: the copy path
//! then takes no lock.

use std::fmt;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most this share of a second's worth passes at once (after a pause):
/// bursts stay short enough not to be felt by the mail server.
const BURST_SECS: f64 = 0.1;
/// A waiting worker looks at the stop flag this often.
const STOP_CHECK: Duration = Duration::from_millis(50);

/// The configured rates; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub bytes_per_sec: Option<NonZeroU64>,
    pub files_per_sec: Option<NonZeroU64>,
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.bytes_per_sec, self.files_per_sec) {
            (None, None) => f.write_str("none"),
            (b, n) => {
                let bytes =
                    b.map(|b| format!("{} bytes/s ({}/s)", b, crate::shown::bytes_human(b.get())));
                let files = n.map(|n| format!("{n} files/s"));
                let parts: Vec<String> = bytes.into_iter().chain(files).collect();
                f.write_str(&parts.join(", "))
            }
        }
    }
}

/// A stop was requested while a worker waited for tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

/// The tokens of one rate. The level goes below zero when more is taken
/// than is there (debt): the taker waits until it would be back at zero,
/// and whoever comes next waits behind it.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    capacity: f64,
    level: f64,
}

impl Bucket {
    fn new(rate: NonZeroU64) -> Bucket {
        let rate = rate.get() as f64;
        let capacity = rate * BURST_SECS;
        Bucket {
            rate,
            capacity,
            level: capacity,
        }
    }

    /// Takes `n` tokens `elapsed` after the previous take; returns how long
    /// the taker must wait before using them.
    fn take(&mut self, n: f64, elapsed: Duration) -> Duration {
        let refilled = self.level + self.rate * elapsed.as_secs_f64();
        self.level = refilled.min(self.capacity) - n;
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.level / self.rate)
        }
    }
}

/// The buckets of one set of limits, and when they were last taken from.
#[derive(Debug)]
struct Buckets {
    last: Instant,
    bytes: Option<Bucket>,
    files: Option<Bucket>,
}

impl Buckets {
    fn new(limits: Limits, now: Instant) -> Buckets {
        Buckets {
            last: now,
            bytes: limits.bytes_per_sec.map(Bucket::new),
            files: limits.files_per_sec.map(Bucket::new),
        }
    }

    /// One file of `bytes` at `now`: the wait for the scarcer rate.
    fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        let bytes_wait = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(bytes as f64, elapsed));
        let files_wait = self
            .files
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(1.0, elapsed));
        bytes_wait.max(files_wait)
    }
}

/// What the copy workers of a mailbox take their tokens from.
#[derive(Debug)]
pub struct Throttle {
    buckets: Mutex<Buckets>,
}

impl Throttle {
    /// `None` for no limit (nothing to take, no lock on the copy path).
    fn new(limits: Limits) -> Option<Throttle> {
        (limits != Limits::default()).then(|| Throttle {
            buckets: Mutex::new(Buckets::new(limits, Instant::now())),
        })
    }

    /// Takes the tokens of one copied file of `bytes` and waits for them,
    /// outside the lock; a stop request ends the wait.
    pub fn pace(&self, bytes: u64, stop: &AtomicBool) -> Result<(), Stopped> {
        let wait = self
            .buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(bytes, Instant::now());
        sleep_unless_stopped(wait, stop)
    }
}

/// Sleeps for `wait` unless a stop request comes first (`Err`), looking
/// at the flag every `STOP_CHECK`.
pub fn sleep_unless_stopped(wait: Duration, stop: &AtomicBool) -> Result<(), Stopped> {
    let until = Instant::now() + wait;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(Stopped);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(STOP_CHECK));
    }
}

/// The limits each mailbox copies under, shared by the process's jobs.
/// A reload sets new ones; each job takes them up when its next mailbox
/// starts (a mailbox in flight keeps the throttle it started with).
#[derive(Debug, Clone)]
pub struct Limiter(Arc<Mutex<InEffect>>);

#[derive(Debug)]
struct InEffect {
    limits: Limits,
    throttle: Option<Arc<Throttle>>,
}

impl InEffect {
    fn new(limits: Limits) -> InEffect {
        InEffect {
            limits,
            throttle: Throttle::new(limits).map(Arc::new),
        }
    }
}

impl Limiter {
    pub fn new(limits: Limits) -> Limiter {
        Limiter(Arc::new(Mutex::new(InEffect::new(limits))))
    }

    /// New limits for mailboxes that start from now on; the same limits
    /// keep the buckets (and the debt) the workers already share.
    pub fn set(&self, limits: Limits) {
        let mut in_effect = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if in_effect.limits != limits {
            *in_effect = InEffect::new(limits);
        }
    }

    /// The limits for a mailbox that starts now, and what its workers
    /// take tokens from (`None`: unlimited).
    pub fn current(&self) -> (Limits, Option<Arc<Throttle>>) {
        let in_effect = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        (in_effect.limits, in_effect.throttle.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits(bytes: Option<u64>, files: Option<u64>) -> Limits {
        Limits {
            bytes_per_sec: bytes.and_then(NonZeroU64::new),
            files_per_sec: files.and_then(NonZeroU64::new),
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_burst_passes_then_takers_wait_their_share() {
        let t0 = Instant::now();
        // 100 files/s: a burst of 10, then 10 ms per file.
        let mut b = Buckets::new(limits(None, Some(100)), t0);
        for _ in 0..10 {
            assert_eq!(b.take(0, t0), Duration::ZERO);
        }
        let w = b.take(0, t0);
        assert!(w.abs_diff(10 * MS) < MS / 10, "{w:?}");
        // The next taker queues behind the first.
        let w = b.take(0, t0);
        assert!(w.abs_diff(20 * MS) < MS / 10, "{w:?}");
        // After a long pause the bucket is full again, never fuller.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(b.take(0, later), Duration::ZERO);
        }
        assert!(b.take(0, later) > Duration::ZERO);
    }

    #[test]
    fn a_message_larger_than_the_bucket_passes_and_is_paid_for() {
        let t0 = Instant::now();
        // 1 MB/s, a bucket of 100 kB; a 5 MB message must not wait forever.
        let mut b = Buckets::new(limits(Some(1_000_000), None), t0);
        let w = b.take(5_000_000, t0);
        assert!(w.abs_diff(Duration::from_millis(4900)) < MS, "{w:?}");
        // Whoever comes next waits for that debt too.
        let w = b.take(1, t0 + Duration::from_secs(1));
        assert!(w.abs_diff(Duration::from_millis(3900)) < MS, "{w:?}");
    }

    #[test]
    fn the_scarcer_rate_decides() {
        let t0 = Instant::now();
        let mut b = Buckets::new(limits(Some(1000), Some(1000)), t0);
        // 1000 bytes against a 100-byte bucket: 0.9 s; one file: none.
        let w = b.take(1000, t0);
        assert!(w.abs_diff(Duration::from_millis(900)) < MS, "{w:?}");
    }

    #[test]
    fn no_limit_is_no_throttle_and_a_reload_takes_effect_for_the_next_mailbox() {
        let l = Limiter::new(Limits::default());
        let (now, t) = l.current();
        assert_eq!((now, t.is_none()), (Limits::default(), true));
        let slow = limits(Some(50_000_000), Some(200));
        l.set(slow);
        let (now, first) = l.current();
        assert_eq!(now, slow);
        // The same limits again keep the shared buckets.
        l.set(slow);
        assert!(Arc::ptr_eq(&first.unwrap(), &l.current().1.unwrap()));
        assert_eq!(
            slow.to_string(),
            "50000000 bytes/s (47.7 MiB/s), 200 files/s"
        );
        assert_eq!(Limits::default().to_string(), "none");
    }

    #[test]
    fn a_stop_ends_the_wait() {
        // 100 kB at 1 kB/s: about 100 s of debt to wait for.
        let t = Throttle::new(limits(Some(1000), None)).unwrap();
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let waited = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(100));
                stop.store(true, Ordering::Relaxed);
            });
            t.pace(100_000, &stop)
        });
        assert_eq!(waited, Err(Stopped));
        assert!(started.elapsed() < Duration::from_secs(50));
    }

    proptest! {
        /// However takers arrive, what they may use by any moment is at
        /// most the burst plus the rate times the time since the start.
        #[test]
        fn never_more_than_burst_plus_rate(
            rate in 1u64..10_000_000,
            takes in proptest::collection::vec((0u64..2_000_000, 0u64..200), 1..200),
        ) {
            let t0 = Instant::now();
            let mut b = Buckets::new(limits(Some(rate), None), t0);
            let mut now = t0;
            let mut used = 0f64;
            for (bytes, gap_ms) in takes {
                now += Duration::from_millis(gap_ms);
                let ready = now + b.take(bytes, now);
                used += bytes as f64;
                let allowed = rate as f64 * (BURST_SECS + (ready - t0).as_secs_f64());
                // A float's rounding, not a real excess.
                prop_assert!(used <= allowed * (1.0 + 1e-9) + 1.0, "{used} > {allowed}");
            }
        }
    }
}
