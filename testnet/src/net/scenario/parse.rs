//! Reading a scenario file: serde from TOML, then checks, so that every
//! mistake is reported with its line and what would be right.

use super::super::layout::{behaviours, check_size, ByzantineArg};
use super::super::proxy::parse_partition;
use super::super::NetError;
use super::format::{
    seconds, Action, Expectation, Scenario, Step, Target, TestnetSpec, When, DEFAULT_FOR,
    DEFAULT_LOAD, DEFAULT_MIN_BLOCKS, DEFAULT_WITHIN,
};
use crate::net::cli::parse_duration;
use bftd_protocol::byzantine::Behaviour;
use bftd_protocol::RequestMode;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    testnet: Option<Spanned<RawTestnet>>,
    #[serde(default)]
    step: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTestnet {
    nodes: Option<usize>,
    f: Option<usize>,
    #[serde(default)]
    byzantine: BTreeMap<String, String>,
    #[serde(default)]
    allow_unsafe: bool,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    jitter_ms: u64,
    #[serde(default)]
    loss_percent: f64,
    load: Option<f64>,
    load_size: Option<usize>,
    request_mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    at: Option<String>,
    after: Option<String>,
    at_height: Option<u64>,
    kill: Option<toml::Value>,
    restart: Option<toml::Value>,
    behave: Option<toml::Value>,
    #[serde(rename = "as")]
    as_behaviour: Option<String>,
    partition: Option<String>,
    heal: Option<bool>,
    load: Option<toml::Value>,
    say: Option<String>,
    expect: Option<toml::Value>,
    p99_below: Option<String>,
    view_above: Option<u64>,
    min_blocks: Option<u64>,
    nodes: Option<Vec<i64>>,
    within: Option<String>,
    #[serde(rename = "for")]
    hold: Option<String>,
}

/// Builds errors for one file.
struct Errors<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Errors<'_> {
    fn line_of(&self, offset: usize) -> usize {
        1 + self
            .text
            .get(..offset)
            .unwrap_or(self.text)
            .matches('\n')
            .count()
    }

    fn at(&self, line: usize, message: impl Into<String>) -> NetError {
        NetError::Scenario {
            path: self.path.to_owned(),
            line: Some(line),
            message: message.into(),
        }
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, NetError> {
        let text = std::fs::read_to_string(path).map_err(NetError::io("read", path))?;
        Scenario::parse(path, &text)
    }

    /// Checks the text of a scenario file (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Scenario, NetError> {
        let errors = Errors { path, text };
        let raw: RawFile = toml::from_str(text).map_err(|error| NetError::Scenario {
            path: path.to_owned(),
            line: error.span().map(|span| errors.line_of(span.start)),
            message: error.message().trim().to_string(),
        })?;
        let testnet = match raw.testnet {
            Some(spanned) => {
                let line = errors.line_of(spanned.span().start);
                testnet(&errors, line, spanned.into_inner())?
            }
            None => testnet(&errors, 1, RawTestnet::default())?,
        };
        if raw.step.is_empty() {
            return Err(NetError::Scenario {
                path: path.to_owned(),
                line: None,
                message: "no steps: add at least one [[step]] (for example `[[step]]` then `at = \"5s\"` and `kill = \"primary\"`)".into(),
            });
        }
        let mut steps: Vec<Step> = Vec::new();
        for (index, spanned) in raw.step.into_iter().enumerate() {
            let line = errors.line_of(spanned.span().start);
            let step = step(&errors, &testnet, index + 1, line, spanned.into_inner())?;
            if let When::At(at) = step.when {
                let earlier = steps.iter().rev().find_map(|s| match s.when {
                    When::At(earlier) => Some((s.number, earlier)),
                    _ => None,
                });
                if let Some((number, earlier)) = earlier.filter(|(_, e)| *e > at) {
                    return Err(errors.at(
                        line,
                        format!(
                            "at = \"{}\" comes before step {number}'s at = \"{}\": steps run in file order",
                            seconds(at),
                            seconds(earlier)
                        ),
                    ));
                }
            }
            steps.push(step);
        }
        Ok(Scenario {
            name: path
                .file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_owned(),
            teaches: leading_comment(text),
            testnet,
            steps,
        })
    }
}

/// The `#` comment lines the file starts with (blank lines between them
/// allowed), without the `#`.
fn leading_comment(text: &str) -> String {
    let mut lines = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            if lines.is_empty() {
                continue;
            }
            lines.push(String::new());
            continue;
        }
        let Some(comment) = line.strip_prefix('#') else {
            break;
        };
        lines.push(comment.strip_prefix(' ').unwrap_or(comment).to_string());
    }
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines.join("\n")
}

fn testnet(errors: &Errors<'_>, line: usize, raw: RawTestnet) -> Result<TestnetSpec, NetError> {
    let bad = |message: String| errors.at(line, format!("[testnet] {message}"));
    let n = match (raw.nodes, raw.f) {
        (Some(n), Some(f)) if n != 3 * f + 1 => {
            return Err(bad(format!(
                "nodes = {n} and f = {f} disagree: n = 3f + 1 (give one of them)"
            )))
        }
        (Some(n), _) => n,
        (None, Some(f)) => 3 * f + 1,
        (None, None) => 4,
    };
    check_size(n, "").map_err(|_| {
        bad(format!(
            "nodes = {n}: n must be 3f + 1 (4, 7, 10, ...), or give f"
        ))
    })?;
    let mut byzantine = Vec::new();
    for (id, behaviour) in &raw.byzantine {
        let node: u16 = id.trim().parse().map_err(|_| {
            bad(format!(
                "byzantine: `{id}` is not a node id (write byzantine = {{ 3 = \"equivocate\" }})"
            ))
        })?;
        let behaviour: Behaviour = behaviour.parse().map_err(|_| {
            bad(format!(
                "byzantine: node {node}: unknown behaviour `{behaviour}`; behaviours: {}",
                Behaviour::NAMES
            ))
        })?;
        byzantine.push(ByzantineArg {
            id: node,
            behaviour,
        });
    }
    behaviours(n, &byzantine, raw.allow_unsafe).map_err(|error| match error {
        NetError::Unsafe { count, f, .. } => bad(format!(
            "{count} byzantine nodes exceed f = {f}: PBFT then guarantees nothing; add allow_unsafe = true to watch it break"
        )),
        other => bad(format!("byzantine: {other}")),
    })?;
    if !(0.0..=100.0).contains(&raw.loss_percent) {
        return Err(bad(format!(
            "loss_percent = {}: a percentage, 0 to 100",
            raw.loss_percent
        )));
    }
    let load = raw.load.unwrap_or(DEFAULT_LOAD);
    if !(0.0..=1_000_000.0).contains(&load) {
        return Err(bad(format!(
            "load = {load}: requests per second, 0 (none) or more"
        )));
    }
    let load_size = raw.load_size.unwrap_or(128);
    if load_size == 0 {
        return Err(bad("load_size = 0: payloads need at least 1 byte".into()));
    }
    let request_mode = match raw.request_mode.as_deref() {
        None | Some("client-signed") => RequestMode::ClientSigned,
        Some("connection-authenticated") => RequestMode::ConnectionAuthenticated,
        Some(other) => {
            return Err(bad(format!(
                "request_mode = \"{other}\": \"client-signed\" or \"connection-authenticated\""
            )))
        }
    };
    Ok(TestnetSpec {
        n,
        byzantine,
        allow_unsafe: raw.allow_unsafe,
        delay_ms: raw.delay_ms,
        jitter_ms: raw.jitter_ms,
        loss_percent: raw.loss_percent,
        load,
        load_size,
        request_mode,
    })
}

fn duration(errors: &Errors<'_>, line: usize, key: &str, text: &str) -> Result<Duration, NetError> {
    parse_duration(text).map_err(|reason| errors.at(line, format!("{key} = \"{text}\": {reason}")))
}

fn target(
    errors: &Errors<'_>,
    line: usize,
    key: &str,
    value: &toml::Value,
    n: usize,
) -> Result<Target, NetError> {
    let last = n - 1;
    let bad = || {
        errors.at(
            line,
            format!(
                "{key} = {value}: a node id (0 to {last}), \"primary\", \"all\", \"down\" (those not running), or a list such as [2, 0, 3, 1]"
            ),
        )
    };
    let id = |value: &toml::Value| -> Result<u16, NetError> {
        match value.as_integer() {
            Some(id) if (0..n as i64).contains(&id) => Ok(id as u16),
            Some(id) => Err(errors.at(
                line,
                format!("{key}: node {id} does not exist (nodes are 0 to {last})"),
            )),
            None => Err(bad()),
        }
    };
    match value {
        toml::Value::Integer(_) => Ok(Target::Node(id(value)?)),
        toml::Value::String(name) => match name.trim() {
            "primary" => Ok(Target::Primary),
            "all" => Ok(Target::All),
            "down" => Ok(Target::Down),
            _ => Err(bad()),
        },
        toml::Value::Array(items) if !items.is_empty() => {
            let ids = items.iter().map(id).collect::<Result<Vec<u16>, _>>()?;
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != ids.len() {
                return Err(errors.at(line, format!("{key} = {value}: a node is named twice")));
            }
            Ok(Target::Nodes(ids))
        }
        _ => Err(bad()),
    }
}

fn behaviour(errors: &Errors<'_>, line: usize, text: &str) -> Result<Option<Behaviour>, NetError> {
    if text.trim() == "honest" {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        errors.at(
            line,
            format!(
                "as = \"{text}\": unknown behaviour; use \"honest\" or one of: {}",
                Behaviour::NAMES
            ),
        )
    })
}

fn step(
    errors: &Errors<'_>,
    spec: &TestnetSpec,
    number: usize,
    line: usize,
    raw: RawStep,
) -> Result<Step, NetError> {
    let when = match (&raw.at, &raw.after, raw.at_height) {
        (None, None, None) => When::After(Duration::ZERO),
        (Some(at), None, None) => When::At(duration(errors, line, "at", at)?),
        (None, Some(after), None) => When::After(duration(errors, line, "after", after)?),
        (None, None, Some(height)) => When::AtHeight(height),
        _ => {
            return Err(errors.at(
                line,
                "give one of at, after and at_height: a step starts once",
            ))
        }
    };
    let action = action(errors, spec, line, &raw)?;
    let mut expectations = Vec::new();
    let names: Vec<String> = match &raw.expect {
        None => Vec::new(),
        Some(toml::Value::String(name)) => vec![name.clone()],
        Some(toml::Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str().map(str::to_owned).ok_or_else(|| {
                    errors.at(
                        line,
                        format!(
                            "expect: {item} is not a string; expect one of {}",
                            Expectation::NAMES
                        ),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(errors.at(
                line,
                format!(
                    "expect = {other}: a string or a list of strings, each one of {}",
                    Expectation::NAMES
                ),
            ))
        }
    };
    for name in &names {
        let normal = name
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        expectations.push(match normal.as_str() {
            "commits continue" => Expectation::CommitsContinue {
                min_blocks: raw.min_blocks.unwrap_or(DEFAULT_MIN_BLOCKS).max(1),
            },
            "no commits" => Expectation::NoCommits,
            "caught up" => Expectation::CaughtUp,
            "view change" => Expectation::ViewChange,
            "check ok" => Expectation::CheckOk,
            "fork detected" => Expectation::ForkDetected,
            _ => {
                return Err(errors.at(
                    line,
                    format!(
                    "expect = \"{name}\": unknown expectation; use {} (and p99_below, view_above)",
                    Expectation::NAMES
                ),
                ))
            }
        });
    }
    if let Some(bound) = &raw.p99_below {
        expectations.push(Expectation::P99Below(duration(
            errors,
            line,
            "p99_below",
            bound,
        )?));
    }
    if let Some(view) = raw.view_above {
        expectations.push(Expectation::ViewAbove(view));
    }
    if raw.min_blocks.is_some()
        && !expectations
            .iter()
            .any(|e| matches!(e, Expectation::CommitsContinue { .. }))
    {
        return Err(errors.at(
            line,
            "min_blocks applies to expect = \"commits continue\", which this step does not expect",
        ));
    }
    if raw.hold.is_some() && !expectations.iter().any(Expectation::holds) {
        return Err(errors.at(
            line,
            "for applies to \"no commits\" and p99_below (what must hold for a while); others take within",
        ));
    }
    if raw.within.is_some() && !expectations.iter().any(|e| !e.holds()) {
        return Err(errors.at(
            line,
            "within applies to expectations that must come true (\"commits continue\", \"caught up\", \"view change\", view_above, \"check ok\", \"fork detected\"); \"no commits\" and p99_below take for",
        ));
    }
    let nodes = match &raw.nodes {
        None => None,
        Some(_) if !expectations.iter().any(Expectation::per_node) => {
            return Err(errors.at(
                line,
                "nodes applies to \"commits continue\", \"no commits\", \"caught up\", \"view change\" and view_above, which this step does not expect",
            ))
        }
        Some(ids) if ids.is_empty() => {
            return Err(errors.at(line, "nodes = []: name at least one node"))
        }
        Some(ids) => Some(
            ids.iter()
                .map(|&id| {
                    u16::try_from(id)
                        .ok()
                        .filter(|&id| usize::from(id) < spec.n)
                        .ok_or_else(|| {
                            errors.at(
                                line,
                                format!("nodes: node {id} does not exist (nodes are 0 to {})", spec.n - 1),
                            )
                        })
                })
                .collect::<Result<Vec<u16>, _>>()?,
        ),
    };
    if action.is_none() && expectations.is_empty() && raw.say.is_none() {
        return Err(errors.at(
            line,
            "this step does nothing: give an action (kill, restart, behave, partition, heal, load), an expect, or a say",
        ));
    }
    Ok(Step {
        number,
        line,
        when,
        action,
        say: raw.say,
        expectations,
        within: match &raw.within {
            Some(text) => duration(errors, line, "within", text)?,
            None => DEFAULT_WITHIN,
        },
        hold: match &raw.hold {
            Some(text) => duration(errors, line, "for", text)?,
            None => DEFAULT_FOR,
        },
        nodes,
    })
}

fn action(
    errors: &Errors<'_>,
    spec: &TestnetSpec,
    line: usize,
    raw: &RawStep,
) -> Result<Option<Action>, NetError> {
    let given: Vec<&str> = [
        ("kill", raw.kill.is_some()),
        ("restart", raw.restart.is_some()),
        ("behave", raw.behave.is_some()),
        ("partition", raw.partition.is_some()),
        ("heal", raw.heal.is_some()),
        ("load", raw.load.is_some()),
    ]
    .iter()
    .filter(|(_, present)| *present)
    .map(|(name, _)| *name)
    .collect();
    if given.len() > 1 {
        return Err(errors.at(
            line,
            format!(
                "one action per step, this one has {}: split it into steps (`after = \"0s\"` runs the next at once)",
                given.join(" and ")
            ),
        ));
    }
    if raw.as_behaviour.is_some() && raw.restart.is_none() && raw.behave.is_none() {
        return Err(errors.at(line, "as goes with restart or behave"));
    }
    let as_behaviour = raw
        .as_behaviour
        .as_deref()
        .map(|text| behaviour(errors, line, text))
        .transpose()?;
    let action = if let Some(value) = &raw.kill {
        Action::Kill(target(errors, line, "kill", value, spec.n)?)
    } else if let Some(value) = &raw.restart {
        Action::Restart {
            target: target(errors, line, "restart", value, spec.n)?,
            behaviour: as_behaviour,
        }
    } else if let Some(value) = &raw.behave {
        let Some(behaviour) = as_behaviour else {
            return Err(errors.at(
                line,
                "behave needs as = \"BEHAVIOUR\" (for example behave = \"primary\" and as = \"equivocate\")",
            ));
        };
        Action::Restart {
            target: target(errors, line, "behave", value, spec.n)?,
            behaviour: Some(behaviour),
        }
    } else if let Some(text) = &raw.partition {
        let spec_text = text.replace('|', "/");
        parse_partition(&spec_text, spec.n).map_err(|reason| {
            errors.at(
                line,
                format!("partition = \"{text}\": {reason} (write groups as \"0,1|2,3\", or one way as \"0->1,2,3\")"),
            )
        })?;
        Action::Partition(text.replace(' ', ""))
    } else if let Some(heal) = raw.heal {
        if !heal {
            return Err(errors.at(
                line,
                "heal = false does nothing: write heal = true, or leave it out",
            ));
        }
        Action::Heal
    } else if let Some(value) = &raw.load {
        let rate = match value {
            toml::Value::Integer(rate) if *rate >= 0 => *rate as f64,
            toml::Value::Float(rate) if (0.0..=1_000_000.0).contains(rate) => *rate,
            toml::Value::String(word) if word == "stop" => 0.0,
            toml::Value::String(word) if word == "start" => {
                if spec.load > 0.0 {
                    spec.load
                } else {
                    DEFAULT_LOAD
                }
            }
            other => {
                return Err(errors.at(
                    line,
                    format!("load = {other}: tx/s (a number, 0 stops it), \"stop\", or \"start\" ([testnet] load's rate)"),
                ))
            }
        };
        Action::Load(rate)
    } else {
        return Ok(None);
    };
    Ok(Some(action))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Scenario, String> {
        Scenario::parse(Path::new("test.toml"), text).map_err(|error| error.to_string())
    }

    /// The error for `text`, which must be refused.
    fn refused(text: &str) -> String {
        match parse(text) {
            Ok(scenario) => panic!("accepted: {scenario:?}"),
            Err(error) => error,
        }
    }

    /// A file using every part of the format reads as written.
    #[test]
    fn reads_every_part() {
        let scenario = parse(
            r#"# Teaches something.
#
# More about it.

[testnet]
f = 1
byzantine = { 3 = "slow:200" }
delay_ms = 5
load = 50

[[step]]
at = "3s"
kill = "primary"
expect = ["view change", "commits continue"]
min_blocks = 7
within = "10s"

[[step]]
after = "500ms"
restart = [2, 0]
as = "honest"

[[step]]
at_height = 200
partition = "0, 1 | 2,3"
expect = "no commits"
for = "2s"
nodes = [0, 1]

[[step]]
behave = 1
as = "equivocate"
p99_below = "2s"
view_above = 0

[[step]]
heal = true
say = "and back"

[[step]]
load = "stop"
"#,
        )
        .expect("valid");
        assert_eq!(scenario.name, "test");
        assert_eq!(scenario.teaches, "Teaches something.\n\nMore about it.");
        assert_eq!(scenario.testnet.n, 4);
        assert_eq!(scenario.testnet.delay_ms, 5);
        assert_eq!(scenario.testnet.load, 50.0);
        assert_eq!(
            scenario.testnet.byzantine,
            vec![ByzantineArg {
                id: 3,
                behaviour: Behaviour::Slow(Duration::from_millis(200))
            }]
        );
        let steps = &scenario.steps;
        assert_eq!(steps.len(), 6);
        assert_eq!(steps[0].line, 11);
        assert_eq!(steps[0].when, When::At(Duration::from_secs(3)));
        assert_eq!(steps[0].action, Some(Action::Kill(Target::Primary)));
        assert_eq!(
            steps[0].expectations,
            vec![
                Expectation::ViewChange,
                Expectation::CommitsContinue { min_blocks: 7 }
            ]
        );
        assert_eq!(steps[0].within, Duration::from_secs(10));
        assert_eq!(steps[1].when, When::After(Duration::from_millis(500)));
        assert_eq!(
            steps[1].action,
            Some(Action::Restart {
                target: Target::Nodes(vec![2, 0]),
                behaviour: Some(None)
            })
        );
        assert_eq!(steps[2].when, When::AtHeight(200));
        assert_eq!(steps[2].action, Some(Action::Partition("0,1|2,3".into())));
        assert_eq!(steps[2].hold, Duration::from_secs(2));
        assert_eq!(steps[2].nodes, Some(vec![0, 1]));
        assert_eq!(
            steps[3].action,
            Some(Action::Restart {
                target: Target::Node(1),
                behaviour: Some(Some(Behaviour::Equivocate))
            })
        );
        assert_eq!(
            steps[3].expectations,
            vec![
                Expectation::P99Below(Duration::from_secs(2)),
                Expectation::ViewAbove(0)
            ]
        );
        assert_eq!(steps[3].when, When::After(Duration::ZERO));
        assert_eq!(steps[4].action, Some(Action::Heal));
        assert_eq!(steps[4].say.as_deref(), Some("and back"));
        assert_eq!(steps[5].action, Some(Action::Load(0.0)));
        assert!(scenario
            .plan()
            .contains("step 3 (line 23): at height 200: partition 0,1|2,3"));
    }

    /// Every mistake is refused with the line it is on (where TOML or the
    /// step knows it) and what would be right.
    #[test]
    fn mistakes_name_their_line_and_the_fix() {
        let cases: &[(&str, &str)] = &[
            ("[[step]]\nat = \"1s\"\nexepct = \"check ok\"\n", "test.toml:3: unknown field `exepct`"),
            ("[[step]\nat = 1\n", "test.toml:1: "),
            ("[[step]]\nat = \"5 parsecs\"\nheal = true\n", "test.toml:1: at = \"5 parsecs\": unknown unit"),
            ("[[step]]\nat = 5\nheal = true\n", "test.toml:2: invalid type: integer `5`, expected a string"),
            ("\n[[step]]\nkill = 0\nheal = true\n", "test.toml:2: one action per step, this one has kill and heal"),
            ("[[step]]\nkill = 7\n", "test.toml:1: kill: node 7 does not exist (nodes are 0 to 3)"),
            ("[[step]]\nkill = \"leader\"\n", "a node id (0 to 3), \"primary\", \"all\", \"down\""),
            ("[[step]]\nrestart = [1, 1]\n", "a node is named twice"),
            ("[[step]]\nexpect = \"everything fine\"\n", "expect = \"everything fine\": unknown expectation; use \"commits continue\""),
            ("[[step]]\nexpect = 3\n", "expect = 3: a string or a list of strings"),
            ("[[step]]\npartition = \"0,1|9\"\n", "partition = \"0,1|9\": node 9 does not exist"),
            ("[[step]]\nbehave = 2\n", "behave needs as = \"BEHAVIOUR\""),
            ("[[step]]\nrestart = 2\nas = \"sneaky\"\n", "as = \"sneaky\": unknown behaviour; use \"honest\" or one of: silent"),
            ("[[step]]\nas = \"silent\"\nexpect = \"check ok\"\n", "as goes with restart or behave"),
            ("[[step]]\nheal = false\n", "heal = false does nothing"),
            ("[[step]]\nload = \"lots\"\n", "load = \"lots\": tx/s"),
            ("[[step]]\nat = \"2s\"\n", "test.toml:1: this step does nothing"),
            ("[[step]]\nat = \"5s\"\nheal = true\n[[step]]\nat = \"2s\"\nheal = true\n", "test.toml:4: at = \"2s\" comes before step 1's at = \"5s\""),
            ("[[step]]\nat = \"5s\"\nafter = \"1s\"\nheal = true\n", "give one of at, after and at_height"),
            ("[[step]]\nexpect = \"check ok\"\nfor = \"3s\"\n", "for applies to \"no commits\" and p99_below"),
            ("[[step]]\nexpect = \"no commits\"\nwithin = \"3s\"\n", "within applies to expectations that must come true"),
            ("[[step]]\nexpect = \"check ok\"\nmin_blocks = 3\n", "min_blocks applies to expect = \"commits continue\""),
            ("[[step]]\nexpect = \"check ok\"\nnodes = [1]\n", "nodes applies to"),
            ("[[step]]\nexpect = \"no commits\"\nnodes = [4]\n", "nodes: node 4 does not exist"),
            ("[testnet]\nnodes = 5\n[[step]]\nheal = true\n", "test.toml:1: [testnet] nodes = 5: n must be 3f + 1"),
            ("[testnet]\nnodes = 4\nf = 2\n[[step]]\nheal = true\n", "nodes = 4 and f = 2 disagree"),
            ("\n[testnet]\nbyzantine = { 0 = \"collude\", 1 = \"collude\" }\n[[step]]\nheal = true\n", "test.toml:2: [testnet] 2 byzantine nodes exceed f = 1: PBFT then guarantees nothing; add allow_unsafe = true"),
            ("[testnet]\nbyzantine = { zero = \"silent\" }\n[[step]]\nheal = true\n", "byzantine: `zero` is not a node id"),
            ("[testnet]\nbyzantine = { 9 = \"silent\" }\n[[step]]\nheal = true\n", "node 9 does not exist"),
            ("[testnet]\nbyzantine = { 2 = \"grumpy\" }\n[[step]]\nheal = true\n", "node 2: unknown behaviour `grumpy`"),
            ("[testnet]\nloss_percent = 150.0\n[[step]]\nheal = true\n", "loss_percent = 150: a percentage"),
            ("[testnet]\nrequest_mode = \"trusting\"\n[[step]]\nheal = true\n", "request_mode = \"trusting\""),
            ("[testnet]\nnodes = 4\n", "test.toml: no steps: add at least one [[step]]"),
        ];
        for (text, expected) in cases {
            let error = refused(text);
            assert!(
                error.contains(expected),
                "for\n{text}\nexpected an error containing\n  {expected}\ngot\n  {error}"
            );
        }
    }

    /// Every file shipped in `scenarios/` reads, opens with a one-line
    /// summary and an explanation, and expects something.
    #[test]
    fn shipped_scenarios_read() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).expect("scenarios/") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|ext| ext != "toml") {
                continue;
            }
            let scenario = Scenario::load(&path).unwrap_or_else(|error| panic!("{error}"));
            let lines: Vec<&str> = scenario.teaches.lines().collect();
            assert!(
                lines.len() >= 3 && lines[1].is_empty(),
                "{}: open with `# summary`, `#`, then what it teaches",
                path.display()
            );
            assert!(
                scenario
                    .steps
                    .iter()
                    .any(|step| !step.expectations.is_empty()),
                "{} expects nothing",
                path.display()
            );
            count += 1;
        }
        assert!(count >= 7, "only {count} scenarios in {}", dir.display());
    }
}
