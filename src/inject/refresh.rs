//! Per-reference refresh: the `refresh=<duration>` option of a reference
//! (`refresh:` in the structured form), the one spelling Sesame records it
//! in, the `rotation` section's `minRefresh`, and the admission check that
//! holds a Pod to it. Pure; the grammar, the pipeline and rotation call it.
//! See docs/annotations.md and docs/kubernetes.md.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::FieldError;

/// The shortest refresh a reference may ask for.
pub(crate) const SHORTEST: Duration = Duration::from_secs(1);
/// The longest: a year of 365 days (humantime's `1y` is 365.25 days, one
/// quarter day too long).
pub(crate) const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// The grammar's sentence for a refresh that is not one. It quotes nothing
/// of the input: the message says what is accepted instead.
pub(crate) const GRAMMAR: &str =
    "refresh must be a duration of whole seconds from 1s to 365d, e.g. refresh=15m or refresh=6h";

/// Reads a refresh as a Pod's author writes it (humantime: `90s`, `15m`,
/// `1h30m`, `1d`): whole seconds, from [`SHORTEST`] to [`LONGEST`].
pub(crate) fn parse(text: &str) -> Result<Duration, &'static str> {
    let d = humantime::parse_duration(text).map_err(|_| GRAMMAR)?;
    if d.subsec_nanos() != 0 || d < SHORTEST || d > LONGEST {
        return Err(GRAMMAR);
    }
    Ok(d)
}

/// The one spelling Sesame writes a refresh in (the `references` and
/// `sources` annotations, messages): the largest of `d`, `h`, `m`, `s` that
/// divides it, without spaces, so that it stays one token of the compact
/// form (`90m`, not `1h 30m`).
pub(crate) struct Spelled(pub Duration);

impl fmt::Display for Spelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
            if secs > 0 && secs.is_multiple_of(size) {
                return write!(f, "{}{unit}", secs / size);
            }
        }
        write!(f, "{secs}s")
    }
}

/// Serde for `SecretRef::refresh`: [`Spelled`] text, read back through
/// [`parse`] (a recorded refresh the grammar would refuse is unreadable).
pub(crate) mod recorded {
    use super::*;

    pub(crate) fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&Spelled(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| parse(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// `rotation`: how often the managed Secrets are re-resolved, beyond each
/// store's `refreshInterval`.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RotationConfig {
    /// The shortest `refresh=` a Pod may ask for: a Pod asking less is
    /// denied. Each refresh costs one read of the store per managed Secret,
    /// so this bounds what one team can make Sesame ask of a store.
    #[serde(default = "default_min_refresh", with = "humantime_serde")]
    pub min_refresh: Duration,
}

/// Below this, `minRefresh` would let Pods keep the stores busy for nothing.
const LOWEST_MIN_REFRESH: Duration = Duration::from_secs(10);

fn default_min_refresh() -> Duration {
    Duration::from_secs(60)
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            min_refresh: default_min_refresh(),
        }
    }
}

impl RotationConfig {
    /// Checks the range; fields are below `rotation`.
    pub fn validate(&self) -> Result<(), FieldError> {
        let d = self.min_refresh;
        if d < LOWEST_MIN_REFRESH || d > LONGEST || d.subsec_nanos() != 0 {
            return Err(FieldError::new(
                "minRefresh",
                "must be whole seconds, at least 10s and at most 365d",
            ));
        }
        Ok(())
    }
}

/// A reference that asks to be refreshed more often than the cluster
/// allows: the sentence of its denial, naming the annotation (and the
/// placeholder), the option and the minimum.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{at}: refresh={} is shorter than this cluster allows; ask for refresh={} or longer (rotation.minRefresh in Sesame's configuration)",
    Spelled(*.asked),
    Spelled(*.minimum)
)]
pub(crate) struct RefreshTooShort {
    /// `annotation "<key>"`, with `: placeholder <p>` for a template's.
    at: String,
    asked: Duration,
    minimum: Duration,
}

/// Holds every reference a Pod asks for to `minimum`, before anything is
/// fetched. Each item: the annotation, the reference, and for a template's
/// placeholder, the placeholder as messages quote it.
pub(crate) fn check<'a>(
    minimum: Duration,
    asked: impl IntoIterator<Item = (&'a str, Option<Duration>, Option<&'a str>)>,
) -> Result<(), RefreshTooShort> {
    for (source, refresh, placeholder) in asked {
        let Some(refresh) = refresh else {
            continue;
        };
        if refresh < minimum {
            let at = match placeholder {
                Some(p) => format!("annotation \"{source}\": placeholder {p}"),
                None => format!("annotation \"{source}\""),
            };
            return Err(RefreshTooShort {
                at,
                asked: refresh,
                minimum,
            });
        }
    }
    Ok(())
}

/// How often one reference is due at rotation: its own `refresh`, held to
/// the cluster's current `minimum` (which may have risen since admission),
/// else its store's `refreshInterval`; `None` when neither is set.
pub(crate) fn interval(
    refresh: Option<Duration>,
    store_interval: Option<Duration>,
    minimum: Duration,
) -> Option<Duration> {
    refresh.map(|d| d.max(minimum)).or(store_interval)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn whole_seconds_from_a_second_to_a_year() {
        for (text, secs) in [
            ("1s", 1),
            ("90s", 90),
            ("15m", 900),
            ("1h30m", 5400),
            ("6h", 21_600),
            ("1d", 86_400),
            ("1.5m", 90),
            ("365d", 31_536_000),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        for bad in ["", "0s", "0", "1.5s", "500ms", "366d", "1y", "soon", "-5m", "5"] {
            assert_eq!(parse(bad), Err(GRAMMAR), "{bad}");
        }
    }

    #[test]
    fn one_spelling_without_spaces() {
        for (secs, text) in [
            (1, "1s"),
            (90, "90s"),
            (900, "15m"),
            (5400, "90m"),
            (3600, "1h"),
            (86_400, "1d"),
            (3661, "3661s"),
        ] {
            let spelled = Spelled(Duration::from_secs(secs)).to_string();
            assert_eq!(spelled, text);
            assert_eq!(parse(&spelled), Ok(Duration::from_secs(secs)));
        }
    }

    #[test]
    fn min_refresh_defaults_to_a_minute_and_is_at_least_ten_seconds() {
        assert_eq!(RotationConfig::default().min_refresh, MIN);
        assert!(RotationConfig::default().validate().is_ok());
        for (secs, ok) in [(9, false), (10, true), (31_536_000, true), (31_536_001, false)] {
            let c = RotationConfig {
                min_refresh: Duration::from_secs(secs),
            };
            assert_eq!(c.validate().is_ok(), ok, "{secs}");
        }
        let e = RotationConfig {
            min_refresh: Duration::from_secs(5),
        }
        .validate()
        .unwrap_err();
        assert_eq!(e.field, "minRefresh");
    }

    fn reference(refresh: Option<u64>) -> Option<Duration> {
        refresh.map(Duration::from_secs)
    }

    #[test]
    fn below_the_minimum_is_refused_with_the_minimum() {
        let fine = reference(Some(60));
        let none = reference(None);
        let fast = reference(Some(30));
        assert_eq!(
            check(
                MIN,
                [("sesame.dev/env.A", fine, None), ("sesame.dev/env.B", none, None)]
            ),
            Ok(())
        );
        let e = check(
            MIN,
            [("sesame.dev/env.A", fine, None), ("sesame.dev/env.B", fast, None)],
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "annotation \"sesame.dev/env.B\": refresh=30s is shorter than this cluster allows; ask for refresh=1m or longer (rotation.minRefresh in Sesame's configuration)"
        );
        let e = check(
            MIN,
            [(
                "sesame.dev/template.URL",
                fast,
                Some("{{ vault:apps/team-a/db#password refresh=30s }}"),
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("annotation \"sesame.dev/template.URL\": placeholder {{"),
            "{e}"
        );
    }

    #[test]
    fn a_reference_is_due_at_its_refresh_held_to_the_minimum_else_its_store() {
        let store = Some(Duration::from_secs(3600));
        assert_eq!(interval(reference(None), store, MIN), store);
        assert_eq!(interval(reference(None), None, MIN), None);
        assert_eq!(
            interval(reference(Some(300)), store, MIN),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            interval(reference(Some(7200)), store, MIN),
            Some(Duration::from_secs(7200)),
            "its own, even when longer than the store's"
        );
        assert_eq!(
            interval(reference(Some(300)), None, MIN),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            interval(reference(Some(20)), store, MIN),
            Some(MIN),
            "admitted under a lower minimum"
        );
    }
}
