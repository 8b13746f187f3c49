//! How many new managed Secrets one namespace may get: a token bucket per
//! namespace, so that forged reviews (or a runaway controller) cannot flood
//! etcd with Secrets. Only creations take a token; a Secret that exists
//! already is rewritten freely, so rollouts never wait.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;

/// `policy.newSecretsPerNamespace`: a token bucket, `burst` at once, then
/// `perMinute`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreationRate {
    #[serde(default = "default_burst")]
    pub burst: u32,
    #[serde(default = "default_per_minute")]
    pub per_minute: u32,
}

impl Default for CreationRate {
    fn default() -> Self {
        Self {
            burst: default_burst(),
            per_minute: default_per_minute(),
        }
    }
}

fn default_burst() -> u32 {
    50
}

fn default_per_minute() -> u32 {
    30
}

/// Namespaces tracked at most; a full map drops the buckets that have
/// refilled (they carry no state), then refuses the unknown ones.
const MAX_NAMESPACES: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every namespace that created Secrets recently.
#[derive(Debug, Default)]
pub struct CreationLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl CreationLimiter {
    /// Takes a token for one new Secret in `namespace`, if it has one left.
    pub fn try_take(&self, namespace: &str, rate: &CreationRate, now: Instant) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return false;
        };
        let burst = f64::from(rate.burst);
        let per_second = f64::from(rate.per_minute) / 60.0;
        let refill = |b: &Bucket| {
            (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second).min(burst)
        };
        if buckets.len() >= MAX_NAMESPACES && !buckets.contains_key(namespace) {
            buckets.retain(|_, b| refill(b) < burst);
            if buckets.len() >= MAX_NAMESPACES {
                return false;
            }
        }
        let bucket = buckets.entry(namespace.to_owned()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let tokens = refill(bucket);
        if tokens < 1.0 {
            *bucket = Bucket { tokens, at: now };
            return false;
        }
        *bucket = Bucket {
            tokens: tokens - 1.0,
            at: now,
        };
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_namespace_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let limiter = CreationLimiter::default();
        let rate = CreationRate {
            burst: 3,
            per_minute: 6,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.try_take("a", &rate, t0));
        }
        assert!(!limiter.try_take("a", &rate, t0), "burst used up");
        assert!(limiter.try_take("b", &rate, t0), "another namespace has its own");
        // 6 a minute: one every 10 s.
        assert!(!limiter.try_take("a", &rate, t0 + Duration::from_secs(9)));
        assert!(limiter.try_take("a", &rate, t0 + Duration::from_secs(10)));
        assert!(!limiter.try_take("a", &rate, t0 + Duration::from_secs(10)));
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(limiter.try_take("a", &rate, later));
        }
        assert!(!limiter.try_take("a", &rate, later));
    }

    #[test]
    fn zero_refuses_every_creation() {
        let limiter = CreationLimiter::default();
        let rate = CreationRate {
            burst: 0,
            per_minute: 0,
        };
        assert!(!limiter.try_take("a", &rate, Instant::now()));
    }
}
