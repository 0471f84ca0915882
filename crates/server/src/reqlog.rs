//! One log line per request for operators (target `whale::request`): id, endpoint, model,
//! prompt / completion / cached tokens, time to first token, duration and status. A request
//! whose client leaves before the answer ends is logged as `cancelled` when its log is dropped.

use std::time::Instant;

pub(crate) struct RequestLog {
    pub id: String,
    pub model: String,
    pub endpoint: &'static str,
    pub stream: bool,
    pub n: usize,
    pub prompt_tokens: usize,
    started: Instant,
    first_token: Option<Instant>,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
    written: bool,
}

impl RequestLog {
    pub fn new(
        id: String,
        model: String,
        endpoint: &'static str,
        stream: bool,
        n: usize,
        prompt_tokens: usize,
    ) -> Self {
        RequestLog {
            id,
            model,
            endpoint,
            stream,
            n,
            prompt_tokens,
            started: Instant::now(),
            first_token: None,
            completion_tokens: 0,
            cached_tokens: 0,
            written: false,
        }
    }

    /// Notes that output has started (the first time only).
    pub fn token(&mut self) {
        self.first_token.get_or_insert_with(Instant::now);
    }

    /// Writes the line: `status` is the HTTP status, or `cancelled`.
    pub fn finish(&mut self, status: &str, finish: &str) {
        if std::mem::replace(&mut self.written, true) {
            return;
        }
        let ms = |t: Instant| t.duration_since(self.started).as_secs_f64() * 1e3;
        let ttft = self.first_token.map(ms);
        tracing::info!(
            target: "whale::request",
            id = %self.id,
            endpoint = self.endpoint,
            model = %self.model,
            stream = self.stream,
            n = self.n,
            prompt_tokens = self.prompt_tokens,
            completion_tokens = self.completion_tokens,
            cached_tokens = self.cached_tokens,
            ttft_ms = ttft.map(|t| (t * 10.0).round() / 10.0),
            duration_ms = (ms(Instant::now()) * 10.0).round() / 10.0,
            status,
            finish,
            "request"
        );
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        self.finish("cancelled", "");
    }
}

/// A request refused before it ran: capacity refusals are warnings, bad requests info.
pub(crate) fn rejected(endpoint: &'static str, e: &crate::api::ApiError) {
    let status = e.status.as_u16();
    if status == 429 || status >= 500 {
        tracing::warn!(target: "whale::request", endpoint, status, param = e.param.as_deref(), "rejected: {}", e.message);
    } else {
        tracing::info!(target: "whale::request", endpoint, status, param = e.param.as_deref(), "rejected: {}", e.message);
    }
}
