//! Counters and histograms for `GET /metrics` (Prometheus text format).

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1)
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            state: Mutex::new((vec![0; bounds.len()], 0.0, 0)),
        }
    }

    pub fn observe(&self, v: f64) {
        let mut s = self.state.lock().unwrap();
        for (i, b) in self.bounds.iter().enumerate() {
            if v <= *b {
                s.0[i] += 1;
            }
        }
        s.1 += v;
        s.2 += 1;
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let s = self.state.lock().unwrap();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&s.0) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            s.2, s.1, s.2
        );
    }
}

const LATENCY: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    pub requests: Counter,
    pub requests_done: Counter,
    pub cancelled: Counter,
    /// context tokens run through the model as prefill (cache hits skip it)
    pub prefill_tokens: Counter,
    pub preempted: Counter,
    /// sequences the engine failed alone (the others of their step went on)
    pub seq_faults: Counter,
    /// engine steps that panicked (their requests got a 500)
    pub engine_panics: Counter,
    /// the engine thread is running and can take requests
    pub engine_up: AtomicBool,
    pub prompt_tokens: Counter,
    pub generated_tokens: Counter,
    pub prefix_query_tokens: Counter,
    pub prefix_hit_tokens: Counter,
    running: AtomicU64,
    waiting: AtomicU64,
    blocks_used: AtomicU64,
    blocks_free: AtomicU64,
    pub ttft: Histogram,
    pub itl: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Counter::default(),
            requests_done: Counter::default(),
            cancelled: Counter::default(),
            prefill_tokens: Counter::default(),
            preempted: Counter::default(),
            seq_faults: Counter::default(),
            engine_panics: Counter::default(),
            engine_up: AtomicBool::new(true),
            prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            prefix_query_tokens: Counter::default(),
            prefix_hit_tokens: Counter::default(),
            running: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            blocks_used: AtomicU64::new(0),
            blocks_free: AtomicU64::new(0),
            ttft: Histogram::new(LATENCY),
            itl: Histogram::new(LATENCY),
        }
    }
}

impl Metrics {
    pub fn set_queue(&self, running: usize, waiting: usize, used: usize, free: usize) {
        self.running.store(running as u64, Ordering::Relaxed);
        self.waiting.store(waiting as u64, Ordering::Relaxed);
        self.blocks_used.store(used as u64, Ordering::Relaxed);
        self.blocks_free.store(free as u64, Ordering::Relaxed);
    }

    pub fn prefix_lookup(&self, prompt: usize, hit: usize) {
        self.prefix_query_tokens.add(prompt as u64);
        self.prefix_hit_tokens.add(hit as u64);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "whale_requests_total",
                "requests accepted",
                self.requests.get(),
            ),
            (
                "whale_requests_finished_total",
                "requests that ran to the end",
                self.requests_done.get(),
            ),
            (
                "whale_requests_cancelled_total",
                "requests whose client went away",
                self.cancelled.get(),
            ),
            (
                "whale_preemptions_total",
                "sequences preempted for cache blocks",
                self.preempted.get(),
            ),
            (
                "whale_sequence_faults_total",
                "sequences failed alone by an engine error",
                self.seq_faults.get(),
            ),
            (
                "whale_engine_panics_total",
                "engine steps that panicked",
                self.engine_panics.get(),
            ),
            (
                "whale_prompt_tokens_total",
                "prompt tokens received",
                self.prompt_tokens.get(),
            ),
            (
                "whale_prefill_tokens_total",
                "context tokens computed by prefill (prefix-cache hits are not)",
                self.prefill_tokens.get(),
            ),
            (
                "whale_generation_tokens_total",
                "tokens generated",
                self.generated_tokens.get(),
            ),
            (
                "whale_prefix_cache_query_tokens_total",
                "prompt tokens looked up in the prefix cache",
                self.prefix_query_tokens.get(),
            ),
            (
                "whale_prefix_cache_hit_tokens_total",
                "prompt tokens served from the prefix cache",
                self.prefix_hit_tokens.get(),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let q = self.prefix_query_tokens.get();
        let rate = if q == 0 {
            0.0
        } else {
            self.prefix_hit_tokens.get() as f64 / q as f64
        };
        let gauges = [
            (
                "whale_running_sequences",
                "sequences in the running batch",
                self.running.load(Ordering::Relaxed) as f64,
            ),
            (
                "whale_waiting_sequences",
                "requests waiting for room",
                self.waiting.load(Ordering::Relaxed) as f64,
            ),
            (
                "whale_cache_blocks_used",
                "latent-cache blocks held by sequences",
                self.blocks_used.load(Ordering::Relaxed) as f64,
            ),
            (
                "whale_cache_blocks_free",
                "latent-cache blocks that can be handed out",
                self.blocks_free.load(Ordering::Relaxed) as f64,
            ),
            (
                "whale_engine_up",
                "1 while the engine can serve",
                self.engine_up.load(Ordering::Relaxed) as u8 as f64,
            ),
            (
                "whale_prefix_cache_hit_rate",
                "share of looked-up prompt tokens served from cache",
                rate,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        self.ttft.render(
            "whale_time_to_first_token_seconds",
            "time from arrival to the first token",
            &mut out,
        );
        self.itl.render(
            "whale_inter_token_latency_seconds",
            "time between consecutive tokens of a sequence",
            &mut out,
        );
        out
    }
}
