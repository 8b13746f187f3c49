//! The policy's glob matcher against the one it replaced (kept below as
//! `before`, the recursive matcher of src/policy/glob.rs up to this
//! change), side by side on the same inputs in one run: a typical grant,
//! the pathological `apps/**/a/**/a/**/a/**/b` on growing paths, and
//! namespace globs. Run with `cargo bench --bench glob`; figures go into
//! docs/performance.md. The old matcher is not run on the 509-segment path:
//! it took over a minute there.

// A benchmark is a test program: a broken setup should stop it loudly.
#![allow(clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use sesame::policy::{glob_match, PathPattern};

/// The allocator `sesame` runs with (src/main.rs), so that figures match.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod before {
    pub fn glob_match(pattern: &str, text: &str) -> bool {
        let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
        let (mut pi, mut ti) = (0, 0);
        let (mut star, mut mark) = (None, 0);
        while ti < t.len() {
            if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
                pi += 1;
                ti += 1;
            } else if pi < p.len() && p[pi] == '*' {
                star = Some(pi);
                mark = ti;
                pi += 1;
            } else if let Some(s) = star {
                pi = s + 1;
                mark += 1;
                ti = mark;
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }

    pub enum Segment {
        Any,
        Glob(String),
    }

    pub fn compile(pattern: &str) -> Vec<Segment> {
        pattern
            .split('/')
            .map(|s| {
                if s == "**" {
                    Segment::Any
                } else {
                    Segment::Glob(s.to_owned())
                }
            })
            .collect()
    }

    pub fn matches(segments: &[Segment], path: &str, namespace: &str) -> bool {
        let parts: Vec<&str> = path.split('/').collect();
        match_segments(segments, &parts, namespace)
    }

    fn match_segments(pattern: &[Segment], parts: &[&str], namespace: &str) -> bool {
        match pattern.split_first() {
            None => parts.is_empty(),
            Some((Segment::Any, rest)) => {
                (0..=parts.len()).any(|skip| match_segments(rest, &parts[skip..], namespace))
            }
            Some((Segment::Glob(g), rest)) => match parts.split_first() {
                None => false,
                Some((first, tail)) => {
                    let matched = if g.contains("{namespace}") {
                        glob_match(&g.replace("{namespace}", namespace), first)
                    } else {
                        glob_match(g, first)
                    };
                    matched && match_segments(rest, tail, namespace)
                }
            },
        }
    }
}

fn globs(c: &mut Criterion) {
    // What benches/data/sesame.yaml grants, on a path of the pipeline bench.
    let mut group = c.benchmark_group("glob/own-subtree");
    let own = "apps/{namespace}/**";
    let (new, old) = (PathPattern::parse(own).expect("pattern"), before::compile(own));
    let path = "apps/team-a/db";
    assert!(new.matches(path, "team-a") && before::matches(&old, path, "team-a"));
    group.bench_function("after", |b| {
        b.iter(|| new.matches(black_box(path), black_box("team-a")))
    });
    group.bench_function("before", |b| {
        b.iter(|| before::matches(&old, black_box(path), black_box("team-a")))
    });
    group.finish();

    // The pattern of the issue on paths of n segments that do not match.
    let mut group = c.benchmark_group("glob/four-any");
    group.sample_size(10).measurement_time(Duration::from_secs(3));
    let four = "apps/**/a/**/a/**/a/**/b";
    let (new, old) = (PathPattern::parse(four).expect("pattern"), before::compile(four));
    for segments in [9, 17, 33, 65, 509] {
        let path = format!("apps{}", "/a".repeat(segments - 1));
        group.bench_with_input(BenchmarkId::new("after", segments), &path, |b, p| {
            b.iter(|| new.matches(black_box(p), "ns"))
        });
        if segments <= 65 {
            assert_eq!(new.matches(&path, "ns"), before::matches(&old, &path, "ns"));
            group.bench_with_input(BenchmarkId::new("before", segments), &path, |b, p| {
                b.iter(|| before::matches(&old, black_box(p), "ns"))
            });
        }
    }
    group.finish();

    // Namespace and service-account globs of a rule.
    let mut group = c.benchmark_group("glob/namespace");
    for (pattern, name) in [("team-*", "team-a"), ("*-prod-?", "payments-prod-1")] {
        assert_eq!(glob_match(pattern, name), before::glob_match(pattern, name));
        group.bench_function(BenchmarkId::new("after", pattern), |b| {
            b.iter(|| glob_match(black_box(pattern), black_box(name)))
        });
        group.bench_function(BenchmarkId::new("before", pattern), |b| {
            b.iter(|| before::glob_match(black_box(pattern), black_box(name)))
        });
    }
    group.finish();
}

criterion_group!(benches, globs);
criterion_main!(benches);
