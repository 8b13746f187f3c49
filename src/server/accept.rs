//! What to do when `accept` fails. Out of file descriptors (EMFILE,
//! ENFILE) the pending connection stays in the backlog and the listener
//! stays readable, so retrying at once spins and logs without end. Instead
//! the loop waits, doubling from 10 ms up to 1 s, and logs at most one line
//! per interval with the number of failures since the last line.

use std::time::{Duration, Instant};

const FIRST_DELAY: Duration = Duration::from_millis(10);
const MAX_DELAY: Duration = Duration::from_secs(1);
/// At most one "accept failed" line per this interval and port.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// At most one log line per `LOG_INTERVAL`.
#[derive(Debug, Default)]
pub(crate) struct LogLimiter {
    last: Option<Instant>,
}

impl LogLimiter {
    /// Whether a line may be written at `now` (and if so, the interval restarts).
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        let due = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= LOG_INTERVAL);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// The pure back-off and log decision for one listener.
#[derive(Debug, Default)]
pub(crate) struct AcceptBackoff {
    delay: Option<Duration>,
    log: LogLimiter,
    unlogged: u64,
}

/// What the accept loop does after a failure.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AfterFailure {
    /// How long to wait before accepting again.
    pub(crate) pause: Duration,
    /// Log now, counting this many failures (this one included).
    pub(crate) log: Option<u64>,
}

impl AcceptBackoff {
    pub(crate) fn failed(&mut self, now: Instant) -> AfterFailure {
        let pause = match self.delay {
            None => FIRST_DELAY,
            Some(d) => (d * 2).min(MAX_DELAY),
        };
        self.delay = Some(pause);
        self.unlogged += 1;
        let log = self.log.due(now).then(|| std::mem::take(&mut self.unlogged));
        AfterFailure { pause, log }
    }

    /// A connection was accepted: the next failure starts from the first delay.
    pub(crate) fn succeeded(&mut self) {
        self.delay = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_up_to_a_second_and_resets_on_success() {
        let mut b = AcceptBackoff::default();
        let now = Instant::now();
        let pauses: Vec<u64> = (0..9).map(|_| b.failed(now).pause.as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.succeeded();
        assert_eq!(b.failed(now).pause, FIRST_DELAY);
    }

    #[test]
    fn one_line_per_interval_with_the_count() {
        let mut b = AcceptBackoff::default();
        let t0 = Instant::now();
        assert_eq!(b.failed(t0).log, Some(1), "the first failure is logged at once");
        for i in 1..1000 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(b.failed(at).log, None, "no line within the interval");
        }
        b.succeeded();
        assert_eq!(
            b.failed(t0 + Duration::from_secs(2)).log,
            None,
            "success does not reopen the log"
        );
        let later = t0 + LOG_INTERVAL;
        assert_eq!(
            b.failed(later).log,
            Some(1001),
            "every failure since the last line"
        );
        assert_eq!(b.failed(later).log, None);
    }
}
