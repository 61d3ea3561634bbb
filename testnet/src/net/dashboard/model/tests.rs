//! The dashboard's rules, on hand-made samples.

use super::*;
use crate::net::dashboard::{control, echo, trusted, Control, ControlRequest};
use bftd_protocol::RequestMode;

fn status(id: u16, view: u64, changing: bool, height: u64) -> NodeStatus {
    NodeStatus {
        id,
        n: 4,
        f: 1,
        view,
        in_view_change: changing,
        primary: (view % 4) as u16,
        height,
        head_hash: String::new(),
        stable_checkpoint: height / 64 * 64,
        pending_requests: 0,
        request_mode: RequestMode::ClientSigned,
        byzantine: None,
        peers_in_touch: 3,
        quorum: 3,
        request_lifetime: 100,
        first_height: 1,
        needs_snapshot: false,
    }
}

fn counters(committed: f64, suspicions: f64) -> Counters {
    Counters {
        requests_committed: committed,
        suspicions,
        ..Counters::default()
    }
}

fn node(id: u16, status: Option<NodeStatus>, counters: Option<Counters>) -> NodeSample {
    NodeSample {
        id,
        running: status.is_some(),
        behaviour: "honest".into(),
        status,
        counters,
        culprits: Vec::new(),
    }
}

/// Four honest nodes in `view`, at `height`, each with `suspicions`.
fn cluster(view: u64, changing: bool, height: u64, suspicions: f64) -> Vec<NodeSample> {
    (0..4)
        .map(|id| {
            node(
                id,
                Some(status(id, view, changing, height)),
                Some(counters(height as f64, suspicions)),
            )
        })
        .collect()
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind).collect()
}

/// The counters the page needs come out of a real exposition, labels
/// summed, histogram buckets in order.
#[test]
fn metrics_parse() {
    let text = "# HELP x\nbftd_requests_committed_total 42\nbftd_suspicions_total 3\n\
        bftd_misbehaviour_evidence_total 1\nbftd_blocks_fetched_total{kind=\"a\"} 2\n\
        bftd_blocks_fetched_total{kind=\"b\"} 3\nbftd_requests_committed_totally 9\n\
        bftd_commit_latency_seconds_bucket{le=\"0.01\"} 5\n\
        bftd_commit_latency_seconds_bucket{le=\"+Inf\"} 10\n\
        bftd_commit_latency_seconds_bucket{le=\"0.001\"} 1\n";
    let c = parse_metrics(text);
    assert_eq!(c.requests_committed, 42.0);
    assert_eq!(c.suspicions, 3.0);
    assert_eq!(c.evidence, 1.0);
    assert_eq!(c.blocks_fetched, 5.0);
    assert_eq!(
        c.latency_buckets,
        vec![(0.001, 1.0), (0.01, 5.0), (f64::INFINITY, 10.0)]
    );
}

/// Quantiles come from what the histogram gained in the interval, not
/// from its lifetime; a restarted node's (shrunk) histogram gives none.
#[test]
fn quantiles_of_an_interval() {
    let before = vec![
        (0.001, 100.0),
        (0.01, 100.0),
        (0.1, 100.0),
        (f64::INFINITY, 100.0),
    ];
    let after = vec![
        (0.001, 100.0),
        (0.01, 190.0),
        (0.1, 200.0),
        (f64::INFINITY, 200.0),
    ];
    assert_eq!(quantile_ms(&before, &after, 0.5), Some(10.0));
    assert_eq!(quantile_ms(&before, &after, 0.99), Some(100.0));
    assert_eq!(quantile_ms(&after, &after, 0.5), None);
    assert_eq!(quantile_ms(&after, &before, 0.5), None);
    let overflow = vec![
        (0.001, 100.0),
        (0.01, 100.0),
        (0.1, 100.0),
        (f64::INFINITY, 150.0),
    ];
    assert_eq!(quantile_ms(&before, &overflow, 0.5), Some(100.0));
}

/// A killed primary, seen by polls: the kill is put down to the command,
/// each backup's suspicion is one event naming whom it suspects, the view
/// change and the new view are announced once each, and the first poll
/// (whatever view it finds) announces nothing.
#[test]
fn a_view_change_is_told_once() {
    let mut tracker = Tracker::default();
    assert!(tracker
        .observe(1_000, cluster(0, false, 10, 0.0))
        .is_empty());
    assert!(tracker
        .observe(2_000, cluster(0, false, 20, 0.0))
        .is_empty());
    tracker.push(Event {
        at_ms: 2_500,
        kind: EventKind::Kill,
        nodes: vec![0],
        command: Some("bftnet kill 0".into()),
        detail: String::new(),
    });
    let mut killed = cluster(0, false, 20, 0.0);
    killed[0] = NodeSample {
        running: false,
        status: None,
        counters: None,
        ..killed[0].clone()
    };
    assert!(tracker.observe(3_000, killed.clone()).is_empty());
    let mut changing = cluster(1, true, 20, 1.0);
    changing[0] = killed[0].clone();
    let events = tracker.observe(4_000, changing.clone());
    assert_eq!(
        kinds(&events),
        vec![
            EventKind::Suspicion,
            EventKind::Suspicion,
            EventKind::Suspicion,
            EventKind::ViewChange
        ]
    );
    assert!(events[0]
        .detail
        .contains("suspects node 0, primary of view 0"));
    assert_eq!(events[3].nodes, vec![1, 2, 3]);
    assert!(tracker.observe(5_000, changing).is_empty(), "told twice");
    let mut installed = cluster(1, false, 25, 1.0);
    installed[0] = killed[0].clone();
    let events = tracker.observe(6_000, installed.clone());
    assert_eq!(kinds(&events), vec![EventKind::NewView]);
    assert_eq!(events[0].nodes, vec![1]);
    assert!(tracker.observe(7_000, installed).is_empty());
}

/// A view change quicker than a poll still shows as a new view.
#[test]
fn a_new_view_between_two_polls_shows() {
    let mut tracker = Tracker::default();
    tracker.observe(1_000, cluster(0, false, 10, 0.0));
    let events = tracker.observe(2_000, cluster(2, false, 12, 0.0));
    assert_eq!(
        kinds(&events),
        vec![EventKind::ViewChange, EventKind::NewView]
    );
    assert!(events[1].detail.contains("node 2 is the primary"));
}

/// A node that stops with no command to say why is a crash; one a
/// recent `kill` stopped is not reported again.
#[test]
fn only_unexplained_stops_are_crashes() {
    let mut tracker = Tracker::default();
    tracker.observe(1_000, cluster(0, false, 10, 0.0));
    let mut stopped = cluster(0, false, 10, 0.0);
    stopped[2].running = false;
    stopped[2].status = None;
    let events = tracker.observe(2_000, stopped);
    assert_eq!(kinds(&events), vec![EventKind::NodeLost]);
    assert_eq!(events[0].nodes, vec![2]);

    let mut tracker = Tracker::default();
    tracker.observe(1_000, cluster(0, false, 10, 0.0));
    tracker.push(Event {
        at_ms: 1_500,
        kind: EventKind::Kill,
        nodes: vec![2],
        command: None,
        detail: String::new(),
    });
    let mut stopped = cluster(0, false, 10, 0.0);
    stopped[2].running = false;
    assert!(tracker.observe(2_000, stopped).is_empty());
}

/// Evidence names the culprit `/evidence` names; state transfer says how
/// many blocks; checkpoints are told at most once per 30 s.
#[test]
fn evidence_state_transfer_and_checkpoints() {
    assert_eq!(
        culprits(&[
            "PrePrepare(Signed { signer: NodeId(3), .. }, Signed { signer: NodeId(3) })".into(),
            "Commit(Signed { signer: NodeId(1) })".into(),
            "nonsense".into(),
        ]),
        vec![1, 3]
    );
    let mut tracker = Tracker::default();
    tracker.observe(1_000, cluster(0, false, 10, 0.0));
    let mut next = cluster(0, false, 70, 0.0);
    next[1].counters.as_mut().unwrap().evidence = 2.0;
    next[1].culprits = vec![3];
    next[2].counters.as_mut().unwrap().blocks_fetched = 5.0;
    let events = tracker.observe(2_000, next);
    assert_eq!(
        kinds(&events),
        vec![EventKind::Evidence, EventKind::StateTransfer]
    );
    assert!(events[0].detail.contains("2 new pieces"));
    assert!(events[0].detail.contains("node 3 signed two conflicting"));
    assert_eq!(events[0].nodes, vec![1, 3]);
    assert!(events[1].detail.contains("fetched 5 certified blocks"));
    // Checkpoint 64 became stable within 30 s of the first poll: not told.
    let events = tracker.observe(31_500, cluster(0, false, 130, 0.0));
    assert_eq!(kinds(&events), vec![EventKind::Checkpoint]);
    assert!(events[0].detail.contains("height 128"));
    assert!(tracker
        .observe(32_000, cluster(0, false, 200, 0.0))
        .is_empty());
}

/// The chart shows the rate of the honest node that committed most (a
/// node cut off commits nothing), and no point for the first poll.
#[test]
fn rate_follows_the_progressing_nodes() {
    let mut tracker = Tracker::default();
    tracker.observe(1_000, cluster(0, false, 100, 0.0));
    let mut next = cluster(0, false, 300, 0.0);
    next[3].counters.as_mut().unwrap().requests_committed = 100.0;
    tracker.observe(3_000, next);
    let points: Vec<&Point> = tracker.series().collect();
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].rate, 100.0);
    assert_eq!(points[0].height, 300);
}

/// The largest group of nodes that reach one another both ways decides
/// who can still form a quorum.
#[test]
fn connected_groups() {
    let all = [0, 1, 2, 3];
    let split = crate::net::proxy::parse_partition("0,1/2,3", 4).unwrap();
    assert_eq!(largest_connected(4, &split, &all).len(), 2);
    let isolate = crate::net::proxy::parse_partition("3/0,1,2", 4).unwrap();
    assert_eq!(largest_connected(4, &isolate, &all), vec![0, 1, 2]);
    let one_way = crate::net::proxy::parse_partition("0->1,2,3", 4).unwrap();
    assert_eq!(largest_connected(4, &one_way, &all), vec![1, 2, 3]);
    assert_eq!(largest_connected(4, &isolate, &[0, 1, 3]), vec![0, 1]);
}

/// Each fault in force gets its line, naming its concept, with the
/// consequence for commits that holds in that state.
#[test]
fn lessons_name_the_concepts() {
    let concepts = |lessons: &[Lesson]| lessons.iter().map(|l| l.concept).collect::<Vec<_>>();
    let mut nodes = cluster(0, false, 10, 0.0);
    let clean = lessons(4, 1, &nodes, &Faults::default());
    assert_eq!(concepts(&clean), vec!["quorum of 2f+1"]);

    nodes[0].running = false;
    nodes[0].status = None;
    nodes[3].behaviour = "slow:200".into();
    let faults = Faults {
        blocked: crate::net::proxy::parse_partition("3/0,1,2", 4).unwrap(),
        partition: Some("3/0,1,2".into()),
        loss_percent: 1.0,
        ..Faults::default()
    };
    let out = lessons(4, 1, &nodes, &faults);
    assert_eq!(
        concepts(&out),
        vec![
            "quorum of 2f+1",
            "fail-stop",
            "gray failure",
            "partition",
            "gray failure"
        ]
    );
    assert!(out[1].text.contains("The 3 running still form a quorum"));
    // With node 0 down and node 3 cut off, nodes 1 and 2 are no quorum.
    assert!(
        out[3].text.contains("commits stop everywhere"),
        "{}",
        out[3].text
    );

    nodes[1].running = false;
    nodes[2].behaviour = "equivocate".into();
    let out = lessons(4, 1, &nodes, &Faults::default());
    assert!(out[1].text.contains("Only 2 run, fewer than a quorum of 3"));
    assert!(concepts(&out).contains(&"Byzantine fault"));
    assert!(concepts(&out).contains(&"beyond f"));
}

/// Controls become the `bftnet` command they echo; bad input is refused
/// before anything runs.
#[test]
fn controls_are_checked_and_echoed() {
    let request = |action: &str| ControlRequest {
        action: action.into(),
        ..ControlRequest::default()
    };
    let kill = control(
        &ControlRequest {
            node: Some(2),
            ..request("kill")
        },
        4,
    )
    .unwrap();
    assert_eq!(echo(&kill, ""), "bftnet kill 2");
    assert_eq!(echo(&kill, " --dir /t"), "bftnet kill --dir /t 2");
    assert!(control(
        &ControlRequest {
            node: Some(4),
            ..request("kill")
        },
        4
    )
    .is_err());
    assert!(control(&request("kill"), 4).is_err());
    let liar = ControlRequest {
        node: Some(1),
        behaviour: Some("equivocate".into()),
        ..request("restart")
    };
    assert_eq!(
        echo(&control(&liar, 4).unwrap(), ""),
        "bftnet restart 1 --byzantine equivocate"
    );
    let honest = ControlRequest {
        behaviour: Some("honest".into()),
        ..liar.clone()
    };
    assert_eq!(
        echo(&control(&honest, 4).unwrap(), ""),
        "bftnet restart 1 --honest"
    );
    let lie = ControlRequest {
        behaviour: Some("; rm -rf /".into()),
        ..liar
    };
    assert!(control(&lie, 4).is_err());
    let cut = ControlRequest {
        spec: Some("0, 1/2,3".into()),
        ..request("partition")
    };
    assert_eq!(
        control(&cut, 4).unwrap(),
        Control::Command {
            args: vec!["partition".into(), "0,1/2,3".into()]
        }
    );
    let bad = ControlRequest {
        spec: Some("0/7".into()),
        ..request("partition")
    };
    assert!(control(&bad, 4).is_err());
    assert!(control(&request("load-start"), 4).is_err());
    assert_eq!(
        control(
            &ControlRequest {
                rate: Some(50.0),
                ..request("load-start")
            },
            4
        ),
        Ok(Control::LoadStart { rate: 50.0 })
    );
    assert!(control(&request("format-disk"), 4).is_err());
}

/// Only JSON from the dashboard's own origin may run controls.
#[test]
fn controls_trust_only_the_page() {
    use axum::http::{header, HeaderMap, HeaderValue};
    let headers = |pairs: &[(header::HeaderName, &'static str)]| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_static(value));
        }
        map
    };
    let json = (header::CONTENT_TYPE, "application/json");
    assert!(trusted(&headers(&[
        (header::HOST, "127.0.0.1:7300"),
        json.clone()
    ])));
    assert!(trusted(&headers(&[
        (header::HOST, "localhost:7300"),
        (header::ORIGIN, "http://localhost:7300"),
        json.clone()
    ])));
    assert!(!trusted(&headers(&[(header::HOST, "127.0.0.1:7300")])));
    assert!(!trusted(&headers(&[
        (header::HOST, "evil.example:7300"),
        json.clone()
    ])));
    assert!(!trusted(&headers(&[
        (header::HOST, "127.0.0.1:7300"),
        (header::ORIGIN, "http://evil.example"),
        json
    ])));
}
