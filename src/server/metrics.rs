//! `/metrics`: the scheduler's counters and the HTTP status counts in Prometheus' text exposition format.

use crate::runtime::scheduler::{Metrics, TTFT_BUCKETS_MS};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// Responses sent, by status code.
#[derive(Debug, Default)]
pub struct HttpCounts(Mutex<BTreeMap<u16, u64>>);

impl HttpCounts {
    pub fn count(&self, status: u16) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(status).or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<u16, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The text of `/metrics`.
pub fn render(m: &Metrics, http: &HttpCounts) -> String {
    let mut out = String::new();
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let counters = [
        ("omex_requests_total", "Requests taken by the scheduler", get(&m.requests)),
        ("omex_requests_finished_total", "Requests that ran to their end", get(&m.finished)),
        ("omex_requests_cancelled_total", "Requests cancelled (client gone, shutdown)", get(&m.cancelled)),
        (
            "omex_requests_rejected_total",
            "Requests the scheduler refused (queue full, too long, invalid)",
            get(&m.rejected),
        ),
        ("omex_requests_failed_total", "Requests ended by an engine error", get(&m.failed)),
        ("omex_prompt_tokens_total", "Prompt tokens admitted", get(&m.prompt_tokens)),
        (
            "omex_prompt_tokens_cached_total",
            "Prompt tokens whose cache an earlier request had computed",
            get(&m.cached_tokens),
        ),
        ("omex_completion_tokens_total", "Tokens generated", get(&m.completion_tokens)),
        ("omex_decode_steps_total", "Forward passes of the batch", get(&m.steps)),
        (
            "omex_step_sequences_total",
            "Sequences over all forward passes (mean batch: this over steps)",
            get(&m.step_sequences),
        ),
        ("omex_preemptions_total", "Sequences that gave their cache back and were computed again", get(&m.preempted)),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    let gauges = [
        ("omex_queue_depth", "Requests waiting for a place in the batch", get(&m.queued)),
        ("omex_active_sequences", "Sequences in the batch", get(&m.active)),
        ("omex_batch_size", "Sequences in the last forward pass", get(&m.last_batch)),
        ("omex_kv_blocks_used", "KV cache blocks in use", get(&m.kv_blocks_used)),
        ("omex_kv_blocks_total", "KV cache blocks", get(&m.kv_blocks_total)),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    let h = m.ttft.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let name = "omex_time_to_first_token_seconds";
    let _ = writeln!(out, "# HELP {name} Time from a request's arrival to its first token\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (bound, n) in TTFT_BUCKETS_MS.iter().zip(h.counts) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", bound / 1e3);
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum_ms / 1e3, h.count);
    let name = "omex_http_responses_total";
    let _ = writeln!(out, "# HELP {name} HTTP responses by status code\n# TYPE {name} counter");
    for (code, n) in http.snapshot() {
        let _ = writeln!(out, "{name}{{code=\"{code}\"}} {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_ends_at_its_count() {
        let m = Metrics::default();
        {
            let mut h = m.ttft.lock().unwrap();
            h.counts[0] = 2;
            h.counts[3] = 1;
            h.counts[TTFT_BUCKETS_MS.len()] = 1;
            h.count = 4;
            h.sum_ms = 40_060.0;
        }
        m.requests.store(4, Ordering::Relaxed);
        let http = HttpCounts::default();
        http.count(200);
        http.count(200);
        http.count(404);
        let text = render(&m, &http);
        assert!(text.contains("\nomex_requests_total 4\n"), "{text}");
        assert!(text.contains("omex_time_to_first_token_seconds_bucket{le=\"0.005\"} 2\n"), "{text}");
        assert!(text.contains("omex_time_to_first_token_seconds_bucket{le=\"0.05\"} 3\n"), "{text}");
        assert!(text.contains("omex_time_to_first_token_seconds_bucket{le=\"30\"} 3\n"), "{text}");
        assert!(text.contains("omex_time_to_first_token_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("omex_time_to_first_token_seconds_count 4\n"), "{text}");
        assert!(text.contains("omex_http_responses_total{code=\"200\"} 2\nomex_http_responses_total{code=\"404\"} 1\n"));
    }
}
