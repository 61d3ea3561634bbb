//! Running a scenario: a fresh testnet (as `bftnet up --detach` starts it,
//! in a directory of its own), the timeline step by step with its
//! expectations judged as it goes, one line printed per event, then a
//! pass/fail table. Every process the run started is stopped by PID at the
//! end, whatever happened: on success, on failure, on Ctrl-C, on a panic.

use super::super::commands::{
    self, heal_nodes, kill_node, partition_nodes, restart_node, UpOptions,
};
use super::super::launch::shutdown_signal;
use super::super::layout::{Layout, State};
use super::super::live::snapshot;
use super::super::load::{self, Histogram, LoadOptions};
use super::super::NetError;
use super::format::{describe_testnet, Action, Scenario, Step, Target, When};
use super::judge::{Judge, Sample, Verdict, SAMPLE_INTERVAL};
use bftd::config::Cluster;
use std::io::Write;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// `at_height` gives up after this long.
const AT_HEIGHT_TIMEOUT: Duration = Duration::from_secs(120);

/// How to run scenarios.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The testnet directory (absent or empty); `None`: a new one under
    /// the temporary directory, deleted after a passing run.
    pub dir: Option<PathBuf>,
    /// Keep the directory (configs, logs, stores) after a passing run too.
    pub keep: bool,
    /// How long nodes may take to become healthy, at the start and after
    /// each restart.
    pub timeout: Duration,
    /// Serve the dashboard while the scenario runs: `Some(None)` on the
    /// default port (or a free one), `Some(Some(port))` on that one.
    pub ui: Option<Option<u16>>,
}

/// One row of the results: an expectation judged, or an action that failed.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The step.
    pub step: usize,
    /// Timeline time when its window opened.
    pub at: Duration,
    /// The expectation (or "action ...").
    pub what: String,
    /// Whether it held.
    pub pass: bool,
    /// How long it took to decide.
    pub took: Duration,
    /// What was seen.
    pub detail: String,
}

/// A scenario's result.
#[derive(Clone, Debug)]
pub struct Report {
    /// The scenario's name.
    pub name: String,
    /// Every expectation judged, in order.
    pub outcomes: Vec<Outcome>,
    /// Steps never run (an action failed before them).
    pub skipped: usize,
    /// Wall-clock time, testnet start and stop included.
    pub elapsed: Duration,
    /// Where the testnet's files are, if kept.
    pub kept: Option<PathBuf>,
}

impl Report {
    /// Whether every expectation held and every step ran.
    pub fn pass(&self) -> bool {
        self.skipped == 0 && self.outcomes.iter().all(|outcome| outcome.pass)
    }

    /// The pass/fail table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} {} in {:.1} s\n",
            self.name,
            if self.pass() { "PASSED" } else { "FAILED" },
            self.elapsed.as_secs_f64()
        );
        let width = self
            .outcomes
            .iter()
            .map(|outcome| outcome.what.len())
            .max()
            .unwrap_or(0)
            .max("expectation".len());
        out.push_str(&format!(
            "  {:>4}  {:>7}  {:<width$}  {:<6}  {:>6}  {}\n",
            "step", "at", "expectation", "result", "took", "detail"
        ));
        for outcome in &self.outcomes {
            out.push_str(&format!(
                "  {:>4}  {:>6.1}s  {:<width$}  {:<6}  {:>5.1}s  {}\n",
                outcome.step,
                outcome.at.as_secs_f64(),
                outcome.what,
                if outcome.pass { "PASS" } else { "FAIL" },
                outcome.took.as_secs_f64(),
                outcome.detail
            ));
        }
        if self.skipped > 0 {
            out.push_str(&format!(
                "  {} step(s) not run: an action failed before them\n",
                self.skipped
            ));
        }
        if let Some(dir) = &self.kept {
            out.push_str(&format!(
                "  testnet files (configs, logs, stores) kept in {}\n",
                dir.display()
            ));
        }
        out
    }
}

/// Prints a line, ignoring a closed pipe: the run must still stop its
/// processes.
pub fn print(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Stops every process of the testnet when dropped, on every way out of a
/// run (a panic included).
struct Teardown {
    layout: Layout,
    children: Vec<Child>,
}

impl Drop for Teardown {
    fn drop(&mut self) {
        let lock = self.layout.lock();
        commands::stop_testnet(&self.layout);
        drop(lock);
        commands::reap(std::mem::take(&mut self.children));
    }
}

/// The running scenario: its testnet, load and clock.
struct Run<'a> {
    scenario: &'a Scenario,
    layout: Layout,
    origin: Instant,
    load: Option<load::Load>,
    timeout: Duration,
    outcomes: Vec<Outcome>,
}

impl Run<'_> {
    fn elapsed(&self) -> Duration {
        self.origin.elapsed()
    }

    fn say(&self, text: &str) {
        let stamp = format!("[{:>6.1}s]", self.elapsed().as_secs_f64());
        for (index, line) in text.lines().enumerate() {
            if index == 0 {
                print(&format!("{stamp} {line}"));
            } else {
                print(&format!("{:width$} {line}", "", width = stamp.len()));
            }
        }
    }

    async fn sample(&self) -> Sample {
        let at = Instant::now();
        let snapshot = match State::load(&self.layout) {
            Ok(state) => snapshot(&self.layout, &state).await,
            Err(_) => {
                return Sample {
                    at,
                    snapshot: super::super::live::Snapshot {
                        dir: String::new(),
                        n: 0,
                        f: 0,
                        request_mode: String::new(),
                        proxy_running: false,
                        faults: String::new(),
                        nodes: Vec::new(),
                    },
                }
            }
        };
        Sample { at, snapshot }
    }

    fn latencies(&self) -> Option<Histogram> {
        self.load.as_ref().map(|load| load.counters.latencies_now())
    }

    /// Starts offering `rate` tx/s to the honest running nodes (stopping
    /// any load first; 0 stops it).
    async fn set_load(&mut self, rate: f64) -> Result<String, NetError> {
        let stopped = self.stop_load();
        if rate <= 0.0 {
            return Ok(if stopped {
                "load stopped".into()
            } else {
                "no load was running".into()
            });
        }
        let state = State::load(&self.layout)?;
        let targets: Vec<u16> = state
            .nodes
            .iter()
            .filter(|node| {
                node.honest() && super::super::launch::node_alive(&self.layout, &state, node.id)
            })
            .map(|node| node.id)
            .collect();
        if targets.is_empty() {
            return Err(NetError::NoHealthyNode {
                dir: self.layout.dir.clone(),
            });
        }
        let cluster = Cluster::load(&self.layout.cluster())?;
        let options = LoadOptions {
            rate,
            duration: None,
            size: self.scenario.testnet.load_size,
            clients_per_node: 1,
            drain: Duration::from_secs(1),
            ..LoadOptions::default()
        };
        let running = load::start(&cluster, &targets, options)
            .await
            .map_err(|source| NetError::Client {
                id: targets.first().copied().unwrap_or(0),
                source,
            })?;
        self.load = Some(running);
        Ok(format!(
            "offering {rate} tx/s of {} B through honest nodes {targets:?}",
            self.scenario.testnet.load_size
        ))
    }

    fn stop_load(&mut self) -> bool {
        match self.load.take() {
            Some(load) => {
                load.stop();
                // Its last receipts do not matter any more.
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(2), load.finish()).await;
                });
                true
            }
            None => false,
        }
    }

    /// The nodes `target` names, now.
    async fn resolve(&self, target: &Target) -> Vec<u16> {
        match target {
            Target::Node(id) => vec![*id],
            Target::Nodes(ids) => ids.clone(),
            Target::All => (0..self.scenario.testnet.n as u16).collect(),
            Target::Primary => vec![self.sample().await.primary()],
            Target::Down => self
                .sample()
                .await
                .snapshot
                .nodes
                .iter()
                .filter(|node| !node.running)
                .map(|node| node.id)
                .collect(),
        }
    }

    async fn act(&mut self, action: &Action) -> Result<String, NetError> {
        let dir = self.layout.dir.clone();
        match action {
            Action::Kill(target) => {
                let mut said = Vec::new();
                for id in self.resolve(target).await {
                    said.push(kill_node(&dir, id).await?);
                }
                Ok(said.join("\n"))
            }
            Action::Restart { target, behaviour } => {
                let mut said = Vec::new();
                for id in self.resolve(target).await {
                    said.push(
                        restart_node(
                            &dir,
                            id,
                            behaviour.clone(),
                            self.scenario.testnet.allow_unsafe,
                            self.timeout,
                        )
                        .await?,
                    );
                }
                Ok(said.join("\n"))
            }
            Action::Partition(spec) => partition_nodes(&dir, &spec.replace('|', "/")).await,
            Action::Heal => heal_nodes(&dir).await,
            Action::Load(rate) => self.set_load(*rate).await,
        }
    }

    /// Waits until `step` may start; `Err` if it never may.
    async fn wait(&self, step: &Step, previous_end: Instant) -> Result<(), String> {
        match step.when {
            When::At(at) => {
                tokio::time::sleep_until((self.origin + at).into()).await;
                Ok(())
            }
            When::After(after) => {
                tokio::time::sleep_until((previous_end + after).into()).await;
                Ok(())
            }
            When::AtHeight(height) => {
                let deadline = Instant::now() + AT_HEIGHT_TIMEOUT;
                loop {
                    let sample = self.sample().await;
                    if sample.height() >= height {
                        return Ok(());
                    }
                    if Instant::now() >= deadline {
                        return Err(format!(
                            "height {height} not reached within {} s ({})",
                            AT_HEIGHT_TIMEOUT.as_secs(),
                            sample.heights()
                        ));
                    }
                    tokio::time::sleep(SAMPLE_INTERVAL).await;
                }
            }
        }
    }

    /// Judges `step`'s expectations, printing each verdict as it comes.
    async fn judge(&mut self, step: &Step) {
        if step.expectations.is_empty() {
            return;
        }
        let first = self.sample().await;
        let opened = self.elapsed();
        let latencies = self.latencies();
        let mut judges: Vec<Option<Judge>> = step
            .expectations
            .iter()
            .map(|expectation| Some(Judge::new(expectation, step, &first, latencies.clone())))
            .collect();
        let mut sample = first;
        while judges.iter().any(Option::is_some) {
            let latencies = self.latencies();
            for slot in judges.iter_mut() {
                let Some(judge) = slot else { continue };
                let Some(verdict) = judge.poll(&sample, &self.layout, latencies.as_ref()).await
                else {
                    continue;
                };
                let took = judge.started.elapsed();
                let what = judge.describe();
                let (pass, detail) = match verdict {
                    Verdict::Pass(detail) => (true, detail),
                    Verdict::Fail(detail) => (false, detail),
                };
                self.say(&format!(
                    "  {} {what}: {detail} ({:.1} s)",
                    if pass { "PASS" } else { "FAIL" },
                    took.as_secs_f64()
                ));
                self.outcomes.push(Outcome {
                    step: step.number,
                    at: opened,
                    what,
                    pass,
                    took,
                    detail,
                });
                *slot = None;
            }
            if judges.iter().any(Option::is_some) {
                tokio::time::sleep(SAMPLE_INTERVAL).await;
                sample = self.sample().await;
            }
        }
    }

    /// Runs the timeline; returns how many steps were not run.
    async fn timeline(&mut self) -> usize {
        let steps = &self.scenario.steps;
        let mut previous_end = Instant::now();
        for (index, step) in steps.iter().enumerate() {
            if let Err(reason) = self.wait(step, previous_end).await {
                self.fail(step, format!("{}", step.when), reason);
                return steps.len() - index - 1;
            }
            let late = match step.when {
                When::At(at) => self.elapsed().saturating_sub(at),
                _ => Duration::ZERO,
            };
            let header = format!(
                "step {} ({}{}){}",
                step.number,
                step.when,
                if late > Duration::from_millis(500) {
                    format!(
                        ", late by {:.1} s: earlier windows ran until now",
                        late.as_secs_f64()
                    )
                } else {
                    String::new()
                },
                step.action
                    .as_ref()
                    .map(|action| format!(": {action}"))
                    .unwrap_or_default()
            );
            self.say(&header);
            if let Some(text) = &step.say {
                self.say(&format!("  # {text}"));
            }
            if let Some(action) = &step.action {
                match self.act(action).await {
                    Ok(said) => self.say(&indent(&said)),
                    Err(error) => {
                        let error = match error {
                            // The file's words, not the command line's.
                            NetError::Unsafe { count, f, .. } => format!(
                                "{count} byzantine nodes would exceed f = {f}: add allow_unsafe = true to [testnet] to watch PBFT break"
                            ),
                            other => other.to_string(),
                        };
                        self.fail(step, format!("action {action}"), error);
                        return steps.len() - index - 1;
                    }
                }
            }
            for expectation in &step.expectations {
                let window = if expectation.holds() {
                    format!("for {:.1} s", step.hold.as_secs_f64())
                } else {
                    format!("within {:.1} s", step.within.as_secs_f64())
                };
                let nodes = match (&step.nodes, expectation.per_node()) {
                    (Some(ids), true) => format!(" at nodes {ids:?}"),
                    _ => String::new(),
                };
                self.say(&format!("  expect {expectation}{nodes} ({window})"));
            }
            self.judge(step).await;
            previous_end = Instant::now();
        }
        0
    }

    fn fail(&mut self, step: &Step, what: String, detail: String) {
        self.say(&format!("  FAIL {what}: {detail}"));
        self.outcomes.push(Outcome {
            step: step.number,
            at: self.elapsed(),
            what,
            pass: false,
            took: Duration::ZERO,
            detail: detail.lines().next().unwrap_or_default().to_string(),
        });
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("  {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A fresh directory for a run without --dir.
fn temporary_dir(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static RUNS: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "bftnet-scenario-{name}-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Runs `scenario` against a fresh testnet and reports. `Err` only when
/// the testnet could not start or the run was interrupted; failed
/// expectations are in the report.
pub async fn run(scenario: &Scenario, options: &RunOptions) -> Result<Report, NetError> {
    let started = Instant::now();
    let temporary = options.dir.is_none();
    let dir = options
        .dir
        .clone()
        .unwrap_or_else(|| temporary_dir(&scenario.name));
    let occupied = std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some());
    if occupied {
        return Err(NetError::BadArgument {
            flag: "--dir",
            value: dir.display().to_string(),
            reason: "a scenario runs on a fresh testnet: give a directory that is absent or empty"
                .into(),
        });
    }
    print(&format!(
        "scenario {} ({})",
        scenario.name,
        scenario.path.display()
    ));
    for line in scenario.teaches.lines() {
        print(format!("  # {line}").trim_end());
    }
    print(&format!(
        "  testnet: {} in {}",
        describe_testnet(&scenario.testnet),
        dir.display()
    ));
    let spec = &scenario.testnet;
    let up = UpOptions {
        dir: dir.clone(),
        n: Some(spec.n),
        byzantine: spec.byzantine.clone(),
        allow_unsafe: spec.allow_unsafe,
        delay_ms: Some(spec.delay_ms),
        jitter_ms: Some(spec.jitter_ms),
        loss_percent: Some(spec.loss_percent),
        request_mode: Some(spec.request_mode),
        detach: true,
        idle: true,
        timeout: options.timeout,
        default_rate: 0.0,
    };
    let (layout, _state, children) = commands::start_testnet(&up).await?;
    let teardown = Teardown {
        layout: layout.clone(),
        children,
    };
    // Served until the run ends (dropping it stops it); a dashboard that
    // cannot start is a warning, not a failed scenario.
    let _dashboard = match options.ui {
        Some(port) => match super::super::dashboard::start(&layout, port).await {
            Ok(dashboard) => {
                print(&format!("  dashboard: {}", dashboard.location()));
                Some(dashboard)
            }
            Err(error) => {
                print(&format!("  warning: no dashboard: {error}"));
                None
            }
        },
        None => None,
    };
    let mut run = Run {
        scenario,
        layout: layout.clone(),
        origin: Instant::now(),
        load: None,
        timeout: options.timeout,
        outcomes: Vec::new(),
    };
    let shutdown = shutdown_signal();
    run.say(&format!(
        "testnet up: {} nodes healthy ({:.1} s after the start)",
        spec.n,
        started.elapsed().as_secs_f64()
    ));
    let interrupted = tokio::select! {
        skipped = async {
            if spec.load > 0.0 {
                match run.set_load(spec.load).await {
                    Ok(said) => run.say(&said),
                    Err(error) => {
                        run.say(&format!("cannot start the load: {error}"));
                        return Some(run.scenario.steps.len());
                    }
                }
            }
            Some(run.timeline().await)
        } => skipped,
        () = shutdown => None,
    };
    run.stop_load();
    run.say("stopping the testnet ...");
    drop(teardown);
    let Some(skipped) = interrupted else {
        print(&format!(
            "interrupted; the testnet's files are in {}",
            dir.display()
        ));
        return Err(NetError::Interrupted);
    };
    let mut report = Report {
        name: scenario.name.clone(),
        outcomes: run.outcomes,
        skipped,
        elapsed: started.elapsed(),
        kept: None,
    };
    if report.pass() && temporary && !options.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        report.kept = Some(dir);
    }
    Ok(report)
}
