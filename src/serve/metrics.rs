//! The server's Prometheus metrics (`GET /metrics`, text format 0.0.4):
//! requests by endpoint and status, their latency, tokens in and out,
//! refusals by reason, and the requests generating and queued right now.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use std::time::Duration;

pub(super) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    prompt_tokens: IntCounter,
    completion_tokens: IntCounter,
    rejected: IntCounterVec,
    in_flight: IntGauge,
    queued: IntGauge,
}

impl Metrics {
    pub(super) fn new() -> Self {
        let registry = Registry::new_custom(Some("kiln".into()), None)
            .expect("a constant prefix is a valid registry");
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "HTTP requests answered, by endpoint and status",
            ),
            &["endpoint", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time to answer (to the first byte for streams), by endpoint",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
            &["endpoint"],
        )
        .expect("valid metric");
        let prompt_tokens = IntCounter::new("prompt_tokens_total", "Prompt tokens processed")
            .expect("valid metric");
        let completion_tokens =
            IntCounter::new("completion_tokens_total", "Tokens generated").expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "rejected_total",
                "Requests refused for lack of capacity, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let in_flight =
            IntGauge::new("requests_in_flight", "Requests generating now").expect("valid metric");
        let queued = IntGauge::new("requests_queued", "Requests waiting for a slot now")
            .expect("valid metric");
        let m = Metrics {
            registry,
            requests,
            latency,
            prompt_tokens,
            completion_tokens,
            rejected,
            in_flight,
            queued,
        };
        let collectors: [Box<dyn prometheus::core::Collector>; 7] = [
            Box::new(m.requests.clone()),
            Box::new(m.latency.clone()),
            Box::new(m.prompt_tokens.clone()),
            Box::new(m.completion_tokens.clone()),
            Box::new(m.rejected.clone()),
            Box::new(m.in_flight.clone()),
            Box::new(m.queued.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are distinct");
        }
        m
    }

    pub(super) fn request(&self, endpoint: &str, status: u16, took: Duration) {
        self.requests
            .with_label_values(&[endpoint, &status.to_string()])
            .inc();
        self.latency
            .with_label_values(&[endpoint])
            .observe(took.as_secs_f64());
    }

    pub(super) fn tokens(&self, prompt: usize, completion: usize) {
        self.prompt_tokens.inc_by(prompt as u64);
        self.completion_tokens.inc_by(completion as u64);
    }

    pub(super) fn rejected(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    pub(super) fn render(&self, in_flight: usize, queued: usize) -> String {
        self.in_flight.set(in_flight as i64);
        self.queued.set(queued as i64);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
