//! compare.sh's results file (one JSON object per run) and the medians over the rounds.

use std::fs;
use std::path::Path;

use serde::Deserialize;

use super::ChartError;

/// The fields of one results line (one broker, one scenario, one round) that the charts use;
/// the other fields of the line are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Run {
    /// Scenario name, e.g. `qos1-1to1` or `qos1-rate-2000`.
    pub scenario: String,
    /// Broker name: `edgehub`, `mosquitto`, `rumqttd`.
    pub broker: String,
    /// Round number, from 1.
    pub round: u32,
    /// The fixed total rate asked for, msgs/s; `None` (JSON `null`): open loop.
    pub offered_per_s: Option<f64>,
    /// Distinct messages received.
    pub delivered: u64,
    /// Deliveries per second.
    pub delivered_per_s: f64,
    /// Median latency, µs (0 when nothing was delivered).
    pub p50_us: f64,
    /// 99th percentile latency, µs (0 when nothing was delivered).
    pub p99_us: f64,
    /// The broker's CPU time per delivered message, µs; `None` when nothing was delivered.
    pub cpu_us_per_delivered: Option<f64>,
}

/// Reads a results file: one JSON object per non-blank line, at least one run.
///
/// # Errors
///
/// [`ChartError::Read`] when the file cannot be read, [`ChartError::Json`] (with the line
/// number) for a line that is not a run, [`ChartError::NoRuns`] when it holds no run.
pub fn read_runs(path: &Path) -> Result<Vec<Run>, ChartError> {
    let text = fs::read_to_string(path).map_err(|source| ChartError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut runs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let run = serde_json::from_str(line).map_err(|source| ChartError::Json {
            path: path.to_owned(),
            line: index + 1,
            source,
        })?;
        runs.push(run);
    }
    if runs.is_empty() {
        return Err(ChartError::NoRuns {
            path: path.to_owned(),
        });
    }
    Ok(runs)
}

/// The median of the finite values; the mean of the two middle ones for an even count
/// (as Python's `statistics.median`, which the tables of compare.sh use). `None` when there
/// is no finite value.
pub fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[middle]),
        _ => Some((values[middle - 1] + values[middle]) / 2.0),
    }
}

/// A scenario of the results, in the order of its first run.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Its name.
    pub name: String,
    /// Its fixed rate, msgs/s (that of its first run); `None`: open loop.
    pub offered_per_s: Option<f64>,
}

/// The medians over the rounds of one broker in one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Medians {
    /// Scenario name.
    pub scenario: String,
    /// Broker name.
    pub broker: String,
    /// How many runs (rounds) the medians are taken over.
    pub runs: usize,
    /// Deliveries per second, over all runs.
    pub delivered_per_s: Option<f64>,
    /// Broker CPU µs per delivered message, over the runs that delivered something.
    pub cpu_us_per_delivered: Option<f64>,
    /// p50 latency, µs, over the runs that delivered something.
    pub p50_us: Option<f64>,
    /// p99 latency, µs, over the runs that delivered something.
    pub p99_us: Option<f64>,
}

impl Medians {
    fn of(scenario: &str, broker: &str, runs: &[&Run]) -> Self {
        // A run with no delivery reports latencies of 0: no measurement, not a fast broker.
        let latency = |pick: fn(&Run) -> f64| {
            median(
                runs.iter()
                    .filter(|run| run.delivered > 0)
                    .map(|run| pick(run)),
            )
        };
        Self {
            scenario: scenario.to_owned(),
            broker: broker.to_owned(),
            runs: runs.len(),
            delivered_per_s: median(runs.iter().map(|run| run.delivered_per_s)),
            cpu_us_per_delivered: median(runs.iter().filter_map(|run| run.cpu_us_per_delivered)),
            p50_us: latency(|run| run.p50_us),
            p99_us: latency(|run| run.p99_us),
        }
    }
}

/// Picks one value out of the medians of a broker in a scenario.
pub type Pick = fn(&Medians) -> Option<f64>;

/// The results grouped by scenario and broker, with the medians over the rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Scenarios, in the order of their first run.
    pub scenarios: Vec<Scenario>,
    /// Brokers, in the order of their first run.
    pub brokers: Vec<String>,
    /// One entry per (scenario, broker) that has runs, scenario by scenario.
    pub medians: Vec<Medians>,
}

impl Summary {
    /// Groups the runs by scenario and broker and takes the medians.
    pub fn of(runs: &[Run]) -> Self {
        let mut scenarios: Vec<Scenario> = Vec::new();
        let mut brokers: Vec<String> = Vec::new();
        for run in runs {
            if !scenarios.iter().any(|s| s.name == run.scenario) {
                scenarios.push(Scenario {
                    name: run.scenario.clone(),
                    offered_per_s: run.offered_per_s,
                });
            }
            if !brokers.contains(&run.broker) {
                brokers.push(run.broker.clone());
            }
        }
        let mut medians = Vec::new();
        for scenario in &scenarios {
            for broker in &brokers {
                let cell: Vec<&Run> = runs
                    .iter()
                    .filter(|run| run.scenario == scenario.name && &run.broker == broker)
                    .collect();
                if !cell.is_empty() {
                    medians.push(Medians::of(&scenario.name, broker, &cell));
                }
            }
        }
        Self {
            scenarios,
            brokers,
            medians,
        }
    }

    /// The medians of `broker` in `scenario`, if it ran there.
    pub fn get(&self, scenario: &str, broker: &str) -> Option<&Medians> {
        self.medians
            .iter()
            .find(|m| m.scenario == scenario && m.broker == broker)
    }

    /// The open-loop scenarios (no fixed rate), in order.
    pub fn open_loop(&self) -> Vec<&Scenario> {
        self.scenarios
            .iter()
            .filter(|s| s.offered_per_s.is_none())
            .collect()
    }

    /// For one broker, `(offered msgs/s, value)` over the fixed-rate scenarios where `pick`
    /// has a value, by increasing offered rate: one line of the latency chart.
    pub fn by_offered_rate(&self, broker: &str, pick: Pick) -> Vec<(f64, f64)> {
        let mut points: Vec<(f64, f64)> = self
            .scenarios
            .iter()
            .filter_map(|s| {
                let offered = s.offered_per_s?;
                Some((offered, pick(self.get(&s.name, broker)?)?))
            })
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        points
    }

    /// The most runs behind any of the medians (the number of rounds).
    pub fn rounds(&self) -> usize {
        self.medians.iter().map(|m| m.runs).max().unwrap_or(0)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A results line as compare.sh writes it, with the fields the charts ignore too.
    pub(crate) fn line(
        scenario: &str,
        broker: &str,
        round: u32,
        offered: Option<u32>,
        delivered_per_s: f64,
        p50_us: f64,
        cpu: f64,
    ) -> String {
        serde_json::json!({
            "scenario": scenario, "mode": "plain", "tls": false, "qos": 1,
            "offered_per_s": offered, "published": 1000, "delivered": 1000,
            "published_per_s": delivered_per_s, "delivered_per_s": delivered_per_s,
            "p50_us": p50_us, "p90_us": p50_us * 2.0, "p99_us": p50_us * 4.0,
            "p999_us": p50_us * 5.0, "max_us": p50_us * 6.0, "lost": 0, "duplicates": 0,
            "reordered": 0, "errors": [], "streams": [], "broker": broker, "round": round,
            "broker_cpu_s": 0.1, "peak_rss_kb": 9000, "idle_rss_kb": 8000,
            "cpu_us_per_delivered": cpu, "generator_cpu_us_per_delivered": 10.0,
        })
        .to_string()
    }

    fn runs(lines: &[String]) -> Vec<Run> {
        lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("a fixture line"))
            .collect()
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median([]), None);
        assert_eq!(median([f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn medians_per_scenario_and_broker_in_first_seen_order() {
        let summary = Summary::of(&runs(&[
            line("qos1-1to1", "edgehub", 1, None, 100.0, 10.0, 20.0),
            line("qos1-1to1", "mosquitto", 1, None, 300.0, 5.0, 15.0),
            line("qos1-1to1", "edgehub", 2, None, 200.0, 30.0, 40.0),
            line("qos1-1to1", "edgehub", 3, None, 150.0, 20.0, 30.0),
            line(
                "qos1-rate-2000",
                "mosquitto",
                1,
                Some(2000),
                2000.0,
                300.0,
                33.0,
            ),
        ]));
        let names: Vec<&str> = summary.scenarios.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["qos1-1to1", "qos1-rate-2000"]);
        assert_eq!(summary.brokers, ["edgehub", "mosquitto"]);
        assert_eq!(summary.medians.len(), 3);
        assert_eq!(summary.rounds(), 3);

        let edgehub = summary.get("qos1-1to1", "edgehub").expect("edgehub ran");
        assert_eq!(edgehub.runs, 3);
        assert_eq!(edgehub.delivered_per_s, Some(150.0));
        assert_eq!(edgehub.p50_us, Some(20.0));
        assert_eq!(edgehub.p99_us, Some(80.0));
        assert_eq!(edgehub.cpu_us_per_delivered, Some(30.0));
        assert!(summary.get("qos1-rate-2000", "edgehub").is_none());

        let open: Vec<&str> = summary
            .open_loop()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(open, ["qos1-1to1"]);
    }

    #[test]
    fn latency_lines_follow_the_offered_rate_and_skip_runs_without_deliveries() {
        let mut lines = vec![
            line(
                "qos1-rate-50000",
                "edgehub",
                1,
                Some(50000),
                40000.0,
                9000.0,
                20.0,
            ),
            line(
                "qos1-rate-2000",
                "edgehub",
                1,
                Some(2000),
                2000.0,
                800.0,
                200.0,
            ),
            line(
                "qos1-rate-2000",
                "edgehub",
                2,
                Some(2000),
                2000.0,
                900.0,
                250.0,
            ),
            line("qos1-1to1", "edgehub", 1, None, 30000.0, 2000.0, 25.0),
        ];
        // A run that delivered nothing: latency 0, no CPU per message.
        lines.push(
            line("qos1-rate-50000", "edgehub", 2, Some(50000), 0.0, 0.0, 0.0)
                .replace("\"delivered\":1000", "\"delivered\":0")
                .replace(
                    "\"cpu_us_per_delivered\":0.0",
                    "\"cpu_us_per_delivered\":null",
                ),
        );
        let summary = Summary::of(&runs(&lines));
        assert_eq!(
            summary.by_offered_rate("edgehub", |m| m.p50_us),
            [(2000.0, 850.0), (50000.0, 9000.0)]
        );
        assert_eq!(
            summary.by_offered_rate("edgehub", |m| m.p99_us),
            [(2000.0, 3400.0), (50000.0, 36000.0)]
        );
        let rate = summary.get("qos1-rate-50000", "edgehub").expect("ran");
        assert_eq!(rate.delivered_per_s, Some(20000.0));
        assert_eq!(rate.cpu_us_per_delivered, Some(20.0));
        assert!(summary.by_offered_rate("rumqttd", |m| m.p50_us).is_empty());
    }

    #[test]
    fn read_runs_names_the_bad_line_and_refuses_an_empty_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("results.jsonl");

        let good = line("qos1-1to1", "edgehub", 1, None, 100.0, 10.0, 20.0);
        fs::write(&path, format!("{good}\n\n{good}\n")).expect("write");
        assert_eq!(read_runs(&path).expect("two runs").len(), 2);

        fs::write(&path, format!("{good}\n{{\"scenario\": \"x\"}}\n")).expect("write");
        let error = read_runs(&path).expect_err("a run without its fields");
        assert!(matches!(error, ChartError::Json { line: 2, .. }), "{error}");
        assert!(error.to_string().contains(":2:"), "{error}");

        fs::write(&path, "\n  \n").expect("write");
        let error = read_runs(&path).expect_err("no runs");
        assert!(matches!(error, ChartError::NoRuns { .. }), "{error}");

        let error = read_runs(&dir.path().join("missing.jsonl")).expect_err("no file");
        assert!(matches!(error, ChartError::Read { .. }), "{error}");
    }
}
