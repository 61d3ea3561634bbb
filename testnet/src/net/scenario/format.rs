//! What a scenario file says, once read and checked ([`super::parse`]
//! reads it): a testnet and a timeline of steps with actions and
//! expectations (docs/design-notes.md §33 has the format and why).

use super::super::layout::ByzantineArg;
use bftd_protocol::byzantine::Behaviour;
use bftd_protocol::RequestMode;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How long an expectation that must come true may take, unless `within`
/// says otherwise: a view change in a debug build under load takes 2-6 s
/// on a shared 2-core machine, catching up after a partition a few more.
pub const DEFAULT_WITHIN: Duration = Duration::from_secs(20);
/// How long an expectation that must hold throughout ("no commits",
/// `p99_below`) is watched, unless `for` says otherwise.
pub const DEFAULT_FOR: Duration = Duration::from_secs(3);
/// Blocks "commits continue" waits for, unless `min_blocks` says otherwise.
pub const DEFAULT_MIN_BLOCKS: u64 = 3;
/// Offered load unless `[testnet] load` says otherwise (tx/s): enough that
/// blocks keep coming, little enough for a debug build on 2 cores.
pub const DEFAULT_LOAD: f64 = 100.0;

/// A scenario, checked: a testnet and a timeline to run against it.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The file's name without `.toml`.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// The comment the file opens with: what the scenario teaches.
    pub teaches: String,
    /// The testnet it starts.
    pub testnet: TestnetSpec,
    /// The timeline, in order.
    pub steps: Vec<Step>,
}

/// `[testnet]`: the fresh testnet a scenario starts.
#[derive(Clone, Debug, PartialEq)]
pub struct TestnetSpec {
    /// Nodes (3f + 1).
    pub n: usize,
    /// Byzantine nodes from the start.
    pub byzantine: Vec<ByzantineArg>,
    /// More than f byzantine nodes allowed.
    pub allow_unsafe: bool,
    /// Node-to-node delay at the fault proxy.
    pub delay_ms: u64,
    /// Extra random delay.
    pub jitter_ms: u64,
    /// Node-to-node loss, percent.
    pub loss_percent: f64,
    /// Offered load from the start, tx/s (0: none).
    pub load: f64,
    /// Payload bytes of the load's requests.
    pub load_size: usize,
    /// How requests are authenticated.
    pub request_mode: RequestMode,
}

impl TestnetSpec {
    /// Faults tolerated.
    pub fn f(&self) -> usize {
        (self.n - 1) / 3
    }
}

/// One step of the timeline: when, what to do, what must follow.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// 1, 2, ... in file order.
    pub number: usize,
    /// Its `[[step]]` line in the file.
    pub line: usize,
    /// When it starts.
    pub when: When,
    /// What it does (none: the step only judges expectations).
    pub action: Option<Action>,
    /// A line for the reader, printed when the step runs.
    pub say: Option<String>,
    /// What must follow the action.
    pub expectations: Vec<Expectation>,
    /// How long an expectation that must come true may take.
    pub within: Duration,
    /// How long an expectation that must hold is watched.
    pub hold: Duration,
    /// `nodes = [3]`: the nodes the height and view expectations look at
    /// (`None`: every honest node). "caught up" still measures them
    /// against the highest honest height of all.
    pub nodes: Option<Vec<u16>>,
}

/// When a step starts. Steps run in order, each after the previous step's
/// expectations are judged.
#[derive(Clone, Debug, PartialEq)]
pub enum When {
    /// `at = "5s"`: this long after the testnet is up (or at once, if the
    /// timeline is already past it).
    At(Duration),
    /// `after = "2s"`: this long after the previous step ended (0: at once).
    After(Duration),
    /// `at_height = 200`: once an honest node has committed this height.
    AtHeight(u64),
}

/// Which nodes an action applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// One node.
    Node(u16),
    /// Whichever node the honest nodes follow as primary right then.
    Primary,
    /// Every node, in id order.
    All,
    /// Every node that is down right then (`restart = "down"`).
    Down,
    /// These nodes, in this order.
    Nodes(Vec<u16>),
}

/// What a step does.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// SIGKILL (fail-stop).
    Kill(Target),
    /// Restart with the same keys and data; `Some(b)` as behaviour `b`
    /// (`Some(None)`: honest), `None` as before.
    Restart {
        /// The nodes.
        target: Target,
        /// The behaviour to restart as.
        behaviour: Option<Option<Behaviour>>,
    },
    /// Cut links at the fault proxy (the `bftnet partition` syntax, with
    /// `|` or `/` between groups).
    Partition(String),
    /// Open every link again.
    Heal,
    /// Offer this many tx/s from now on (0: stop the load).
    Load(f64),
}

/// What must follow a step's action.
#[derive(Clone, Debug, PartialEq)]
pub enum Expectation {
    /// The highest honest height grows by `min_blocks` within the window.
    CommitsContinue {
        /// Blocks to wait for.
        min_blocks: u64,
    },
    /// No honest node's height moves for `for` (after a 1 s settle).
    NoCommits,
    /// Every running honest node reaches the highest honest height of the
    /// window's start.
    CaughtUp,
    /// The honest nodes with a quorum settle in a view above the one they
    /// were in at the window's start.
    ViewChange,
    /// ... in a view above this one.
    ViewAbove(u64),
    /// `bftnet check` passes: honest logs agree, certificates verify.
    CheckOk,
    /// `bftnet check` finds honest nodes with different blocks at one height.
    ForkDetected,
    /// The 99th percentile latency of the load's receipts arriving during
    /// `for` is below this.
    P99Below(Duration),
}

impl Expectation {
    /// The names `expect = "..."` accepts.
    pub const NAMES: &'static str = "\"commits continue\", \"no commits\", \"caught up\", \"view change\", \"check ok\", \"fork detected\"";

    /// Whether it is judged over `for` (it must hold throughout) rather
    /// than `within` (it must come true).
    pub fn holds(&self) -> bool {
        matches!(self, Expectation::NoCommits | Expectation::P99Below(_))
    }

    /// Whether it looks at nodes' heights or views (and so takes `nodes`),
    /// rather than at the whole log or the load.
    pub fn per_node(&self) -> bool {
        !matches!(
            self,
            Expectation::CheckOk | Expectation::ForkDetected | Expectation::P99Below(_)
        )
    }
}

pub(super) fn seconds(duration: Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds.fract() == 0.0 {
        format!("{seconds:.0}s")
    } else if duration < Duration::from_secs(1) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{seconds}s")
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(id) => write!(f, "{id}"),
            Target::Primary => write!(f, "primary"),
            Target::All => write!(f, "all"),
            Target::Down => write!(f, "down"),
            Target::Nodes(ids) => write!(
                f,
                "{}",
                ids.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
            ),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Kill(target) => write!(f, "kill {target}"),
            Action::Restart {
                target,
                behaviour: None,
            } => write!(f, "restart {target}"),
            Action::Restart {
                target,
                behaviour: Some(behaviour),
            } => write!(
                f,
                "restart {target} as {}",
                behaviour
                    .as_ref()
                    .map_or("honest".into(), ToString::to_string)
            ),
            Action::Partition(spec) => write!(f, "partition {spec}"),
            Action::Heal => write!(f, "heal"),
            Action::Load(rate) if *rate == 0.0 => write!(f, "load stop"),
            Action::Load(rate) => write!(f, "load {rate} tx/s"),
        }
    }
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expectation::CommitsContinue { min_blocks } => {
                write!(f, "commits continue (+{min_blocks} blocks)")
            }
            Expectation::NoCommits => write!(f, "no commits"),
            Expectation::CaughtUp => write!(f, "caught up"),
            Expectation::ViewChange => write!(f, "view change"),
            Expectation::ViewAbove(view) => write!(f, "view above {view}"),
            Expectation::CheckOk => write!(f, "check ok"),
            Expectation::ForkDetected => write!(f, "fork detected"),
            Expectation::P99Below(bound) => write!(f, "p99 below {}", seconds(*bound)),
        }
    }
}

impl fmt::Display for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            When::At(at) => write!(f, "at {}", seconds(*at)),
            When::After(after) if after.is_zero() => write!(f, "then"),
            When::After(after) => write!(f, "after {}", seconds(*after)),
            When::AtHeight(height) => write!(f, "at height {height}"),
        }
    }
}

impl Scenario {
    /// The timeline as `bftnet scenario check` prints it.
    pub fn plan(&self) -> String {
        let mut out = format!("{}: {}\n", self.name, self.path.display());
        for line in self.teaches.lines() {
            out.push_str(format!("  # {line}").trim_end());
            out.push('\n');
        }
        out.push_str(&format!("  testnet: {}\n", describe_testnet(&self.testnet)));
        for step in &self.steps {
            out.push_str(&format!(
                "  step {} (line {}): {}{}\n",
                step.number,
                step.line,
                step.when,
                step.action
                    .as_ref()
                    .map(|action| format!(": {action}"))
                    .unwrap_or_default()
            ));
            for expectation in &step.expectations {
                let window = if expectation.holds() {
                    format!("for {}", seconds(step.hold))
                } else {
                    format!("within {}", seconds(step.within))
                };
                let nodes = match (&step.nodes, expectation.per_node()) {
                    (Some(ids), true) => format!(" at nodes {ids:?}"),
                    _ => String::new(),
                };
                out.push_str(&format!("      expect {expectation}{nodes} ({window})\n"));
            }
        }
        out
    }
}

/// One line describing a testnet spec.
pub fn describe_testnet(spec: &TestnetSpec) -> String {
    let mut parts = vec![format!("{} nodes (f = {})", spec.n, spec.f())];
    if spec.byzantine.is_empty() {
        parts.push("all honest".into());
    } else {
        parts.push(
            spec.byzantine
                .iter()
                .map(|arg| format!("node {} {}", arg.id, arg.behaviour))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let network = super::super::proxy::Faults {
        delay_ms: spec.delay_ms,
        jitter_ms: spec.jitter_ms,
        loss_percent: spec.loss_percent,
        ..Default::default()
    }
    .describe();
    if !network.is_empty() {
        parts.push(network);
    }
    if spec.load > 0.0 {
        parts.push(format!("load {} tx/s", spec.load));
    } else {
        parts.push("no load".into());
    }
    parts.join(", ")
}
