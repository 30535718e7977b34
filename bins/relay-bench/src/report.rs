//! Figures, medians across runs, and the printed table with ratios and targets.

use std::fmt::Write as _;

/// Whether a smaller or a larger value of a metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Better {
    /// Latency, memory: smaller is better.
    Lower,
    /// Throughput: larger is better.
    Higher,
}

/// What a metric must reach to meet the project's target.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Goal {
    /// Just report it.
    None,
    /// relay/peer ratio must be at most this (for `Lower`) or at least this (`Higher`).
    Ratio(f64),
    /// The relay's own value must be at most this (`Lower`) or at least this (`Higher`).
    Absolute(f64),
}

/// One measured number.
#[derive(Debug, Clone)]
pub(crate) struct Metric {
    /// Name with unit, e.g. "push latency p50 (us)".
    pub(crate) name: String,
    /// The value.
    pub(crate) value: f64,
    /// Which way is better.
    pub(crate) better: Better,
    /// The target it is judged by.
    pub(crate) goal: Goal,
}

impl Metric {
    /// A metric.
    pub(crate) fn new(name: impl Into<String>, value: f64, better: Better, goal: Goal) -> Metric {
        Metric { name: name.into(), value, better, goal }
    }
}

/// The median of `values` (mean of the middle two for an even count).
pub(crate) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 }
}

/// Medians per metric name over runs (each run a list of metrics in the same order).
pub(crate) fn medians(runs: &[Vec<Metric>]) -> Vec<Metric> {
    let Some(first) = runs.first() else { return Vec::new() };
    first
        .iter()
        .map(|m| {
            let mut vals: Vec<f64> =
                runs.iter().filter_map(|r| r.iter().find(|x| x.name == m.name)).map(|x| x.value).collect();
            Metric { value: median(&mut vals), ..m.clone() }
        })
        .collect()
}

/// Formats one workload's table: metric, relay, peer, ratio, target, verdict.
pub(crate) fn table(workload: &str, runs: usize, ours: &[Metric], peer: Option<&[Metric]>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "== {workload} (median of {runs} run{})", if runs == 1 { "" } else { "s" });
    let _ = writeln!(
        out,
        "  {:<40} {:>12} {:>12} {:>8}  {:<10} verdict",
        "metric", "relay", "peer", "ratio", "target"
    );
    for m in ours {
        let p = peer.and_then(|p| p.iter().find(|x| x.name == m.name)).map(|x| x.value);
        let ratio = p.filter(|p| *p > 0.0).map(|p| m.value / p);
        let (target, verdict) = match (m.goal, m.better) {
            (Goal::None, _) => (String::from("-"), String::from("reported")),
            (Goal::Ratio(r), better) => {
                let sign = if better == Better::Lower { "<=" } else { ">=" };
                let verdict = match ratio {
                    Some(x)
                        if (better == Better::Lower && x <= r) || (better == Better::Higher && x >= r) =>
                    {
                        "met"
                    }
                    Some(_) => "MISSED",
                    None => "no peer",
                };
                (format!("{sign}{r}x"), verdict.to_owned())
            }
            (Goal::Absolute(a), better) => {
                let ok =
                    (better == Better::Lower && m.value <= a) || (better == Better::Higher && m.value >= a);
                let sign = if better == Better::Lower { "<=" } else { ">=" };
                (format!("{sign}{}", fmt_num(a)), if ok { "met" } else { "MISSED" }.to_owned())
            }
        };
        let _ = writeln!(
            out,
            "  {:<40} {:>12} {:>12} {:>8}  {:<10} {}",
            m.name,
            fmt_num(m.value),
            p.map(fmt_num).unwrap_or_else(|| "-".into()),
            ratio.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into()),
            target,
            verdict
        );
    }
    out
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn table_judges_ratio_targets() {
        let ours = [Metric::new("lat", 40.0, Better::Lower, Goal::Ratio(0.8))];
        let peer = [Metric::new("lat", 60.0, Better::Lower, Goal::Ratio(0.8))];
        let t = table("w", 3, &ours, Some(&peer));
        assert!(t.contains("0.67x") && t.contains("met"), "{t}");
        let slow = [Metric::new("lat", 59.0, Better::Lower, Goal::Ratio(0.8))];
        assert!(table("w", 3, &slow, Some(&peer)).contains("MISSED"));
    }
}
