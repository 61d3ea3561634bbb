//! Judging a step's expectations: each is watched over its window from the
//! moment the step's action returned, on samples of every node's `/status`
//! taken every [`SAMPLE_INTERVAL`], and on `bftnet check` for the safety
//! expectations. What must come true passes as soon as it does (or fails
//! when `within` runs out); what must hold fails as soon as it breaks (or
//! passes when `for` has run out).

use super::super::check::{self, CheckReport};
use super::super::layout::{Layout, State};
use super::super::live::Snapshot;
use super::super::load::Histogram;
use super::format::{Expectation, Step};
use bftd::client_api::NodeStatus;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often nodes are sampled while expectations are judged.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
/// "no commits" starts watching this long after the action: blocks that
/// were past their commit phase when a partition fell may still land, and
/// are not commits the partition allowed.
pub const SETTLE: Duration = Duration::from_secs(1);
/// `bftnet check` runs at most this often while a safety expectation waits
/// (it reads every honest log from height 1).
const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Every node's status at one moment.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// What the nodes said.
    pub snapshot: Snapshot,
}

impl Sample {
    /// Honest nodes that answered, with their status.
    pub fn honest(&self) -> impl Iterator<Item = (u16, &NodeStatus)> {
        self.snapshot
            .nodes
            .iter()
            .filter(|node| node.behaviour == "honest")
            .filter_map(|node| Some((node.id, node.status.as_ref()?)))
    }

    /// The highest height an honest node has committed.
    pub fn height(&self) -> u64 {
        self.snapshot.height()
    }

    /// The primary the honest nodes in the highest view follow.
    pub fn primary(&self) -> u16 {
        self.snapshot.view().1
    }

    /// This sample with only the nodes `scope` names (all if `None`).
    pub fn only(&self, scope: Option<&[u16]>) -> Sample {
        let mut sample = self.clone();
        if let Some(ids) = scope {
            sample.snapshot.nodes.retain(|node| ids.contains(&node.id));
        }
        sample
    }

    /// "0:12 1:12 2:DOWN 3:9(equivocate)".
    pub fn heights(&self) -> String {
        self.snapshot
            .nodes
            .iter()
            .map(|node| {
                let height = match (&node.status, node.running) {
                    (Some(status), _) => status.height.to_string(),
                    (None, true) => "?".into(),
                    (None, false) => "DOWN".into(),
                };
                if node.behaviour == "honest" {
                    format!("{}:{height}", node.id)
                } else {
                    format!("{}:{height}({})", node.id, node.behaviour)
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// An expectation's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It held; what was seen.
    Pass(String),
    /// It did not; what was seen instead.
    Fail(String),
}

/// What an expectation remembers from its window's start.
#[derive(Debug)]
enum Baseline {
    Height(u64),
    View(u64),
    Heights(Option<BTreeMap<u16, u64>>),
    Latencies(Option<Histogram>),
    Check { next: Instant, last: Option<String> },
}

/// One expectation being judged.
#[derive(Debug)]
pub struct Judge {
    /// What is expected.
    pub expectation: Expectation,
    /// When its window opened.
    pub started: Instant,
    /// When its window closes.
    deadline: Instant,
    baseline: Baseline,
    /// The nodes it looks at (`None`: all).
    scope: Option<Vec<u16>>,
}

impl Judge {
    /// Opens the window of `expectation`, a step's, on the sample taken as
    /// its action returned; `latencies` is the running load's histogram.
    pub fn new(
        expectation: &Expectation,
        step: &Step,
        first: &Sample,
        latencies: Option<Histogram>,
    ) -> Judge {
        let started = first.at;
        let scope = step.nodes.clone().filter(|_| expectation.per_node());
        // "caught up" measures the nodes it looks at against every node.
        let whole = first;
        let first = &first.only(scope.as_deref());
        let deadline = match expectation {
            Expectation::NoCommits => started + SETTLE + step.hold,
            Expectation::P99Below(_) => started + step.hold,
            _ => started + step.within,
        };
        let baseline = match expectation {
            Expectation::CommitsContinue { .. } => Baseline::Height(first.height()),
            Expectation::CaughtUp => Baseline::Height(whole.height()),
            Expectation::ViewChange => Baseline::View(
                first
                    .honest()
                    .map(|(_, status)| status.view)
                    .max()
                    .unwrap_or(0),
            ),
            Expectation::ViewAbove(view) => Baseline::View(*view),
            Expectation::NoCommits => Baseline::Heights(None),
            Expectation::P99Below(_) => Baseline::Latencies(latencies),
            Expectation::CheckOk | Expectation::ForkDetected => Baseline::Check {
                next: started,
                last: None,
            },
        };
        Judge {
            expectation: expectation.clone(),
            started,
            deadline,
            baseline,
            scope,
        }
    }

    /// What is expected, of which nodes: "no commits at nodes [3]".
    pub fn describe(&self) -> String {
        match &self.scope {
            Some(ids) => format!("{} at nodes {ids:?}", self.expectation),
            None => self.expectation.to_string(),
        }
    }

    /// Looks at a new sample; `Some` once the expectation is decided.
    pub async fn poll(
        &mut self,
        sample: &Sample,
        layout: &Layout,
        latencies: Option<&Histogram>,
    ) -> Option<Verdict> {
        let sample = &sample.only(self.scope.as_deref());
        let over = sample.at >= self.deadline;
        let window = self.deadline.saturating_duration_since(self.started);
        match (&self.expectation, &mut self.baseline) {
            (Expectation::CommitsContinue { min_blocks }, Baseline::Height(base)) => {
                let height = sample.height();
                if height >= *base + min_blocks {
                    return Some(Verdict::Pass(format!("height {base} -> {height}")));
                }
                over.then(|| {
                    Verdict::Fail(format!(
                        "height {base} -> {height} in {:.0} s, wanted +{min_blocks} (nodes {})",
                        window.as_secs_f64(),
                        sample.heights()
                    ))
                })
            }
            (Expectation::CaughtUp, Baseline::Height(target)) => {
                let running: Vec<_> = sample
                    .snapshot
                    .nodes
                    .iter()
                    .filter(|node| node.behaviour == "honest" && node.running)
                    .collect();
                let behind: Vec<String> = running
                    .iter()
                    .filter(|node| node.status.as_ref().is_none_or(|s| s.height < *target))
                    .map(|node| node.id.to_string())
                    .collect();
                if behind.is_empty() && !running.is_empty() {
                    return Some(Verdict::Pass(format!(
                        "every running honest node at >= {target} ({})",
                        sample.heights()
                    )));
                }
                over.then(|| {
                    Verdict::Fail(format!(
                        "node(s) {} still below {target} ({})",
                        behind.join(", "),
                        sample.heights()
                    ))
                })
            }
            (Expectation::ViewChange | Expectation::ViewAbove(_), Baseline::View(base)) => {
                judge_view(sample, *base, over)
            }
            (Expectation::NoCommits, Baseline::Heights(baseline)) => {
                if sample.at < self.started + SETTLE {
                    return None;
                }
                let now: BTreeMap<u16, u64> = sample
                    .honest()
                    .map(|(id, status)| (id, status.height))
                    .collect();
                let Some(base) = baseline else {
                    if now.is_empty() {
                        // Nothing to watch is no evidence that nothing moved.
                        return Some(Verdict::Fail(format!(
                            "no honest node in scope answered ({})",
                            sample.heights()
                        )));
                    }
                    *baseline = Some(now);
                    return None;
                };
                if let Some((id, before, after)) = base.iter().find_map(|(id, before)| {
                    let after = *now.get(id)?;
                    (after != *before).then_some((*id, *before, after))
                }) {
                    return Some(Verdict::Fail(format!(
                        "node {id} committed: height {before} -> {after}"
                    )));
                }
                over.then(|| {
                    Verdict::Pass(format!(
                        "no honest height moved in {:.0} s ({})",
                        (window - SETTLE).as_secs_f64(),
                        sample.heights()
                    ))
                })
            }
            (Expectation::P99Below(bound), Baseline::Latencies(start)) => {
                if !over {
                    return None;
                }
                let (Some(start), Some(now)) = (start.as_ref(), latencies) else {
                    return Some(Verdict::Fail(
                        "no load runs: p99_below needs [testnet] load or a load step".into(),
                    ));
                };
                let window = now.since(start);
                if window.count() == 0 {
                    return Some(Verdict::Fail(format!(
                        "no receipt arrived in the {:.0} s window",
                        window_seconds(self.started, self.deadline)
                    )));
                }
                let p99 = window.quantile_ms(0.99);
                let detail = format!(
                    "p99 {p99:.0} ms, p50 {:.0} ms over {} receipts",
                    window.quantile_ms(0.5),
                    window.count()
                );
                Some(if p99 < bound.as_secs_f64() * 1000.0 {
                    Verdict::Pass(detail)
                } else {
                    Verdict::Fail(detail)
                })
            }
            (expectation, Baseline::Check { next, last }) => {
                if sample.at < *next {
                    return None;
                }
                let fork = *expectation == Expectation::ForkDetected;
                let report = run_check(layout).await;
                *next = Instant::now() + CHECK_INTERVAL;
                let verdict = judge_check(fork, &report);
                match verdict {
                    Ok(verdict) => Some(verdict),
                    Err(seen) => {
                        *last = Some(seen);
                        over.then(|| Verdict::Fail(last.clone().unwrap_or_default()))
                    }
                }
            }
            _ => Some(Verdict::Fail("internal: mismatched baseline".into())),
        }
    }
}

fn window_seconds(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}

/// Honest nodes with a quorum all settled (not changing views) in a view
/// above `base`. Nodes without a quorum (cut off, or alone) are left out:
/// they suspect primaries they cannot hear and climb views on their own.
fn judge_view(sample: &Sample, base: u64, over: bool) -> Option<Verdict> {
    let nodes: Vec<(u16, &NodeStatus)> = sample
        .honest()
        .filter(|(_, status)| status.has_quorum())
        .collect();
    let views = nodes
        .iter()
        .map(|(id, status)| {
            format!(
                "{id}:{}{}",
                status.view,
                if status.in_view_change { "*" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    let settled = !nodes.is_empty()
        && nodes
            .iter()
            .all(|(_, status)| status.view > base && !status.in_view_change);
    if settled {
        let primary = nodes.first().map_or(0, |(_, status)| status.primary);
        return Some(Verdict::Pass(format!(
            "view {base} -> {} (primary {primary}; views {views})",
            nodes.iter().map(|(_, s)| s.view).max().unwrap_or(0)
        )));
    }
    over.then(|| {
        Verdict::Fail(format!(
            "honest nodes with a quorum not all settled above view {base} (views {views}; * = changing)",
        ))
    })
}

async fn run_check(layout: &Layout) -> Result<CheckReport, String> {
    let state = State::load(layout).map_err(|error| error.to_string())?;
    check::run(layout, &state)
        .await
        .map_err(|error| error.to_string())
}

/// A check's verdict, or `Err(what was seen)` while it may still change:
/// "check ok" fails at once on a fork or a request executed twice, and
/// waits out a log it could not read (a node still catching up); "fork
/// detected" passes on a fork and waits for one otherwise.
fn judge_check(fork: bool, report: &Result<CheckReport, String>) -> Result<Verdict, String> {
    let report = match report {
        Ok(report) => report,
        Err(error) => return Err(format!("check could not run: {error}")),
    };
    let divergence = report.divergent_height.map(|height| {
        let holders = report
            .forks
            .iter()
            .map(|fork| {
                format!(
                    "{} held by {}",
                    fork.hash.get(..8).unwrap_or(&fork.hash),
                    fork.nodes
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                )
            })
            .collect::<Vec<_>>()
            .join(" vs ");
        format!("FORK at height {height}: {holders}")
    });
    match (fork, divergence) {
        (true, Some(fork)) => Ok(Verdict::Pass(fork)),
        (false, Some(fork)) => Ok(Verdict::Fail(fork)),
        (false, None) if report.ok() => Ok(Verdict::Pass(summary(report))),
        (false, None) if !report.double_executions.is_empty() => Ok(Verdict::Fail(format!(
            "executed twice: {}",
            report.double_executions.join("; ")
        ))),
        (_, None) => Err(summary(report)),
    }
}

/// One line of a check report.
fn summary(report: &CheckReport) -> String {
    let errors: Vec<String> = report
        .nodes
        .iter()
        .filter_map(|node| Some(format!("node {}: {}", node.id, node.error.as_deref()?)))
        .collect();
    if errors.is_empty() {
        format!(
            "{} honest logs agree on heights 1..={}, every certificate verified",
            report.nodes.len(),
            report.common_height
        )
    } else {
        errors.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::check::{Fork, NodeLog};
    use super::super::super::live::NodeView;
    use super::super::format::When;
    use super::*;
    use bftd_protocol::RequestMode;

    /// A node as a sample shows it: `(height, view, has a quorum)`, or
    /// down; node 3 is byzantine.
    fn sample(at: Instant, nodes: &[Option<(u64, u64, bool)>]) -> Sample {
        let nodes = nodes
            .iter()
            .enumerate()
            .map(|(id, node)| NodeView {
                id: id as u16,
                running: node.is_some(),
                pid: None,
                behaviour: if id == 3 {
                    "silent".into()
                } else {
                    "honest".into()
                },
                address: String::new(),
                listen: String::new(),
                metrics: String::new(),
                data_dir: String::new(),
                log: String::new(),
                status: node.map(|(height, view, quorum)| NodeStatus {
                    id: id as u16,
                    n: 4,
                    f: 1,
                    view,
                    in_view_change: false,
                    primary: (view % 4) as u16,
                    height,
                    head_hash: String::new(),
                    stable_checkpoint: 0,
                    pending_requests: 0,
                    request_mode: RequestMode::ClientSigned,
                    byzantine: None,
                    peers_in_touch: if quorum { 3 } else { 0 },
                    quorum: 3,
                    request_lifetime: 1024,
                    first_height: 1,
                    needs_snapshot: false,
                }),
            })
            .collect();
        Sample {
            at,
            snapshot: Snapshot {
                dir: String::new(),
                n: 4,
                f: 1,
                request_mode: String::new(),
                proxy_running: true,
                faults: String::new(),
                nodes,
            },
        }
    }

    fn step(nodes: Option<Vec<u16>>) -> Step {
        Step {
            number: 1,
            line: 1,
            when: When::After(Duration::ZERO),
            action: None,
            say: None,
            expectations: Vec::new(),
            within: Duration::from_secs(10),
            hold: Duration::from_secs(3),
            nodes,
        }
    }

    /// Feeds samples to a new judge; returns the verdict of each.
    fn verdicts(
        expectation: Expectation,
        nodes: Option<Vec<u16>>,
        samples: &[Sample],
    ) -> Vec<Option<Verdict>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let layout = Layout::new(std::path::Path::new("/nonexistent"));
        let mut judge = Judge::new(&expectation, &step(nodes), &samples[0], None);
        samples
            .iter()
            .map(|sample| runtime.block_on(judge.poll(sample, &layout, None)))
            .collect()
    }

    fn passed(verdict: &Option<Verdict>) -> bool {
        matches!(verdict, Some(Verdict::Pass(_)))
    }

    fn failed(verdict: &Option<Verdict>) -> bool {
        matches!(verdict, Some(Verdict::Fail(_)))
    }

    /// "commits continue" waits for min_blocks on the highest honest height
    /// (a byzantine node's height does not count) and fails when `within`
    /// runs out short of it.
    #[test]
    fn commits_continue() {
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        let expectation = Expectation::CommitsContinue { min_blocks: 3 };
        let got = verdicts(
            expectation.clone(),
            None,
            &[
                sample(
                    at(0),
                    &[
                        Some((10, 0, true)),
                        None,
                        Some((9, 0, true)),
                        Some((99, 0, true)),
                    ],
                ),
                sample(
                    at(1),
                    &[
                        Some((12, 0, true)),
                        None,
                        Some((12, 0, true)),
                        Some((99, 0, true)),
                    ],
                ),
                sample(
                    at(2),
                    &[
                        Some((12, 0, true)),
                        None,
                        Some((13, 0, true)),
                        Some((99, 0, true)),
                    ],
                ),
            ],
        );
        assert_eq!(got[..2], [None, None]);
        assert!(passed(&got[2]), "{got:?}");
        let got = verdicts(
            expectation,
            None,
            &[
                sample(at(0), &[Some((10, 0, true)); 4]),
                sample(at(10), &[Some((12, 0, true)); 4]),
            ],
        );
        assert!(failed(&got[1]), "{got:?}");
    }

    /// "no commits" ignores the first second (blocks in flight land), then
    /// fails on any honest node's move, passes after `for`, and never
    /// passes on nothing: a scope with no answering honest node fails.
    #[test]
    fn no_commits() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let quiet = |h: u64| {
            [
                Some((h, 0, true)),
                Some((h, 0, true)),
                Some((h, 0, true)),
                None,
            ]
        };
        let got = verdicts(
            Expectation::NoCommits,
            None,
            &[
                sample(at(0), &quiet(5)),
                sample(at(900), &quiet(6)),
                sample(at(1000), &quiet(6)),
                sample(at(4000), &quiet(6)),
            ],
        );
        assert_eq!(got[..3], [None, None, None]);
        assert!(passed(&got[3]), "{got:?}");
        let mut moved = quiet(6);
        moved[1] = Some((7, 0, true));
        let got = verdicts(
            Expectation::NoCommits,
            None,
            &[
                sample(at(0), &quiet(6)),
                sample(at(1000), &quiet(6)),
                sample(at(2000), &moved),
            ],
        );
        assert!(
            matches!(&got[2], Some(Verdict::Fail(text)) if text.contains("node 1 committed: height 6 -> 7")),
            "{got:?}"
        );
        let got = verdicts(
            Expectation::NoCommits,
            Some(vec![3]),
            &[sample(at(0), &quiet(6)), sample(at(1000), &quiet(6))],
        );
        assert!(failed(&got[1]), "node 3 is byzantine: {got:?}");
    }

    /// "caught up" at node 3... of node 2 here (3 is byzantine): the target
    /// is the highest height of every honest node at the start, not of the
    /// scope's.
    #[test]
    fn caught_up_measures_the_scope_against_everyone() {
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        let got = verdicts(
            Expectation::CaughtUp,
            Some(vec![2]),
            &[
                sample(
                    at(0),
                    &[
                        Some((50, 0, true)),
                        Some((50, 0, true)),
                        Some((10, 0, true)),
                        None,
                    ],
                ),
                sample(
                    at(1),
                    &[
                        Some((60, 0, true)),
                        Some((60, 0, true)),
                        Some((49, 0, true)),
                        None,
                    ],
                ),
                sample(
                    at(2),
                    &[
                        Some((70, 0, true)),
                        Some((70, 0, true)),
                        Some((50, 0, true)),
                        None,
                    ],
                ),
            ],
        );
        assert_eq!(got[..2], [None, None]);
        assert!(passed(&got[2]), "{got:?}");
    }

    /// "view change": every honest node with a quorum settles above the
    /// start's view; one without a quorum (cut off) is left out.
    #[test]
    fn view_change_leaves_out_nodes_without_a_quorum() {
        let t = Instant::now();
        let at = |s: u64| t + Duration::from_secs(s);
        let got = verdicts(
            Expectation::ViewChange,
            None,
            &[
                sample(
                    at(0),
                    &[
                        Some((5, 0, true)),
                        Some((5, 0, true)),
                        Some((5, 0, true)),
                        None,
                    ],
                ),
                sample(
                    at(1),
                    &[
                        Some((5, 1, true)),
                        Some((5, 0, true)),
                        Some((5, 7, false)),
                        None,
                    ],
                ),
                sample(
                    at(2),
                    &[
                        Some((5, 1, true)),
                        Some((5, 1, true)),
                        Some((5, 0, false)),
                        None,
                    ],
                ),
            ],
        );
        assert_eq!(got[1], None);
        assert!(passed(&got[2]), "{got:?}");
        let got = verdicts(
            Expectation::ViewAbove(1),
            None,
            &[
                sample(
                    at(0),
                    &[Some((5, 1, true)); 3]
                        .iter()
                        .copied()
                        .chain([None])
                        .collect::<Vec<_>>(),
                ),
                sample(
                    at(10),
                    &[Some((5, 1, true)); 3]
                        .iter()
                        .copied()
                        .chain([None])
                        .collect::<Vec<_>>(),
                ),
            ],
        );
        assert!(failed(&got[1]), "{got:?}");
    }

    fn report(divergent: Option<u64>, error: Option<&str>) -> CheckReport {
        CheckReport {
            nodes: vec![NodeLog {
                id: 2,
                source: "live",
                height: 9,
                requests: 9,
                error: error.map(str::to_owned),
                hashes: Vec::new(),
            }],
            common_height: 9,
            divergent_height: divergent,
            forks: vec![
                Fork {
                    hash: "aaaaaaaaaaaa".into(),
                    nodes: vec![2],
                },
                Fork {
                    hash: "bbbbbbbbbbbb".into(),
                    nodes: vec![3],
                },
            ],
            double_executions: Vec::new(),
        }
    }

    /// "check ok" fails at once on a fork and waits out a node it could not
    /// read; "fork detected" passes only on a fork.
    #[test]
    fn check_verdicts() {
        let fork = Ok(report(Some(7), None));
        let clean = Ok(report(None, None));
        let unreadable = Ok(report(None, Some("no block in time")));
        assert!(matches!(judge_check(false, &clean), Ok(Verdict::Pass(_))));
        assert!(
            matches!(judge_check(false, &fork), Ok(Verdict::Fail(text)) if text.contains("FORK at height 7: aaaaaaaa held by 2 vs bbbbbbbb held by 3"))
        );
        assert!(
            matches!(judge_check(false, &unreadable), Err(text) if text.contains("no block in time"))
        );
        assert!(matches!(judge_check(true, &fork), Ok(Verdict::Pass(_))));
        assert!(judge_check(true, &clean).is_err());
        assert!(judge_check(true, &Err("down".into())).is_err());
    }
}
