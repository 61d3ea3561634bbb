//! Seeded simulation sweeps: safety and liveness with up to f byzantine
//! replicas under every fault the simulator injects, and proof that the
//! checkers fail when safety is really broken.
//!
//! Replay any failing seed with the command the assertion prints.

use bftd_protocol::byzantine::Behaviour;
use bftnet::sim::{run, sweep, ByzantineSpec, Faults, SimConfig, SweepSummary, Twins};

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn config(n: usize, byzantine: ByzantineSpec) -> SimConfig {
    let mut config = SimConfig::new(n, 0);
    config.byzantine = byzantine;
    config
}

fn random_byzantine(count: usize, behaviour: Behaviour) -> ByzantineSpec {
    ByzantineSpec::Random { count, behaviour }
}

fn assert_clean(summary: &SweepSummary, what: &str, replay: &str) {
    assert_eq!(
        summary.failures(),
        0,
        "{what}: {summary:#?}\nreplay: bftnet sim {replay} --seed {}",
        summary.first_failure.as_ref().map_or(0, |f| f.seed)
    );
    assert!(summary.commits > 0, "{what}: nothing committed");
}

/// With no faults and no byzantine replica, every request is ordered
/// everywhere, and the trace hash makes a seed replay exactly.
#[test]
fn honest_cluster_and_exact_replay() {
    let mut base = config(4, ByzantineSpec::Fixed(Vec::new()));
    base.faults = Faults::NONE;
    let summary = sweep(&base, 0..30, threads(), &|_, _, _| {});
    assert_clean(&summary, "honest, no faults", "-n 4 --faults none");

    let mut noisy = config(4, random_byzantine(1, Behaviour::Random));
    noisy.seed = 7;
    let first = run(&noisy);
    let second = run(&noisy);
    assert_eq!(first.trace_hash, second.trace_hash, "same seed, same trace");
    noisy.seed = 8;
    assert_ne!(
        run(&noisy).trace_hash,
        first.trace_hash,
        "another seed, another trace"
    );
}

/// Crashes, restarts, partitions (one-way too), drops, duplicates and
/// reordering, with every replica honest.
#[test]
fn faults_without_byzantine_replicas() {
    for (n, seeds) in [(4, 150), (7, 60)] {
        let summary = sweep(
            &config(n, ByzantineSpec::Fixed(Vec::new())),
            0..seeds,
            threads(),
            &|_, _, _| {},
        );
        assert_clean(&summary, &format!("n={n}, faults only"), &format!("-n {n}"));
    }
}

/// Each byzantine behaviour on f of 4 replicas, under every fault: safety
/// always, and liveness after the heal.
#[test]
fn every_behaviour_with_f_byzantine_n4() {
    for behaviour in Behaviour::all() {
        let summary = sweep(
            &config(4, random_byzantine(1, behaviour.clone())),
            0..60,
            threads(),
            &|_, _, _| {},
        );
        assert_clean(
            &summary,
            &format!("n=4, {behaviour}"),
            &format!("-n 4 --byzantine {behaviour}"),
        );
    }
}

/// Two byzantine replicas of seven (f = 2), mixed and equivocating.
#[test]
fn f_byzantine_n7() {
    for behaviour in [
        Behaviour::Random,
        Behaviour::Equivocate,
        Behaviour::ForgeCertificate,
    ] {
        let summary = sweep(
            &config(7, random_byzantine(2, behaviour.clone())),
            0..40,
            threads(),
            &|_, _, _| {},
        );
        assert_clean(
            &summary,
            &format!("n=7, 2x {behaviour}"),
            &format!("-n 7 --byzantine 2:{behaviour}"),
        );
    }
}

/// Beyond f, safety is not promised — and the agreement checker sees the
/// fork: two of four replicas colluding split the honest ones.
#[test]
fn colluders_beyond_f_fork_the_log() {
    let config = config(4, random_byzantine(2, Behaviour::Collude));
    let fork = (0..300).find(|&seed| {
        let mut run_config = config.clone();
        run_config.seed = seed;
        run(&run_config)
            .violation
            .is_some_and(|v| v.property == "agreement")
    });
    assert!(
        fork.is_some(),
        "two colluders never forked the log in 300 seeds"
    );
}

/// A deliberately broken commit rule (2f instead of 2f+1 matching commits)
/// is caught: the certificate checker verifies every committed block against
/// the committee on its own, so blocks committed on a short quorum fail it in
/// every run — while the very same seeds are clean with the correct rule.
#[test]
fn broken_commit_quorum_is_caught() {
    let byzantine = random_byzantine(1, Behaviour::Random);
    let correct = config(4, byzantine.clone());
    let summary = sweep(&correct, 0..30, threads(), &|_, _, _| {});
    assert_clean(&summary, "correct quorum", "-n 4 --byzantine random");

    let mut broken = config(4, byzantine);
    broken.break_quorum = true;
    let summary = sweep(&broken, 0..30, threads(), &|_, _, _| {});
    assert_eq!(
        summary.certificate_violations, 30,
        "a broken quorum rule went unnoticed: {summary:#?}"
    );
}

/// The adversary reaches the view change's semantics: with the new-view
/// rule broken (`O` forgets the prepared certificates in `V`), crashes,
/// partitions and lost messages around view changes let a replica that had
/// not executed a committed batch commit a null batch at its height, and
/// the agreement checker sees the fork (in 1 of these 300 seeds with every
/// replica honest, 8 with a random byzantine one). The same seeds are clean
/// with the correct rule (the sweeps above).
#[test]
fn broken_new_view_rule_forks_and_is_caught() {
    for byzantine in [
        ByzantineSpec::Fixed(Vec::new()),
        random_byzantine(1, Behaviour::Random),
    ] {
        let mut broken = config(4, byzantine);
        broken.break_new_view = true;
        let summary = sweep(&broken, 0..300, threads(), &|_, _, _| {});
        assert!(
            summary.agreement_violations > 0,
            "a broken new-view rule went unnoticed in 300 seeds: {summary:#?}"
        );
    }
}

/// A node that lies to its clients about where their requests committed is
/// caught by the clients themselves (its receipts do not verify), and a
/// client that believed replies without verifying them would accept
/// falsehoods: the receipts checker fails then.
#[test]
fn lies_to_clients_are_refused_and_believing_them_is_caught() {
    let liar = config(4, random_byzantine(1, Behaviour::LieToClients));
    let summary = sweep(&liar, 0..40, threads(), &|_, _, _| {});
    assert_clean(
        &summary,
        "n=4, lie-to-clients",
        "-n 4 --byzantine lie-to-clients",
    );
    assert!(summary.lies_refused > 0, "no lie was told: {summary:#?}");
    assert!(
        summary.receipts_verified > 0,
        "no receipt verified: {summary:#?}"
    );

    let mut credulous = liar;
    credulous.break_receipts = true;
    let summary = sweep(&credulous, 0..40, threads(), &|_, _, _| {});
    assert!(
        summary.receipt_violations > 0,
        "clients believing lies went unnoticed: {summary:#?}"
    );
}

/// Twins: each byzantine identity runs as two honest instances with one key
/// on different sides of partitions, the equivocation that needs no code.
#[test]
fn twins_cannot_fork_the_log() {
    for (n, count, seeds) in [(4, 1, 120), (7, 2, 40)] {
        let mut twins = config(n, random_byzantine(count, Behaviour::Silent));
        twins.twins = Twins::Always;
        let summary = sweep(&twins, 0..seeds, threads(), &|_, _, _| {});
        assert_clean(
            &summary,
            &format!("n={n}, {count} twins"),
            &format!("-n {n} --byzantine twins"),
        );
    }
}

/// Many clients with short-lived requests under every fault and a random
/// byzantine replica: requests expire and are re-signed, executed requests
/// leave the replicas' memory while a replayer re-submits them, and none
/// executes twice or outside its validity.
#[test]
fn crowd_with_expiry_and_replays() {
    let mut crowd = config(4, random_byzantine(1, Behaviour::Random));
    crowd.twins = Twins::Sometimes;
    crowd.crowd();
    let summary = sweep(&crowd, 0..40, threads(), &|_, _, _| {});
    assert_clean(
        &summary,
        "n=4, crowd",
        "-n 4 --byzantine random --workload crowd",
    );
}

/// After the heal every request executes everywhere within the stated
/// bound, and the sweep says how long the worst took.
#[test]
fn liveness_bound_is_stated_and_met() {
    let mut mixed = config(4, random_byzantine(1, Behaviour::Random));
    mixed.twins = Twins::Sometimes;
    let summary = sweep(&mixed, 0..100, threads(), &|_, _, _| {});
    assert_clean(&summary, "n=4, random", "-n 4 --byzantine random");
    assert!(summary.liveness_bound_ms > 0);
    assert!(
        summary.worst_time_to_commit_ms <= summary.liveness_bound_ms,
        "{summary:#?}"
    );
}

/// Connection-authenticated mode: requests carry their clients' grants and
/// travel in vouched forwards; with a random byzantine replica (twins in a
/// quarter of the seeds) under every fault, nothing invented executes and
/// every request commits within the bound.
#[test]
fn connection_authenticated_mode_with_f_byzantine() {
    let mut vouched = config(4, random_byzantine(1, Behaviour::Random));
    vouched.twins = Twins::Sometimes;
    vouched.protocol.request_mode = bftd_protocol::RequestMode::ConnectionAuthenticated;
    let summary = sweep(&vouched, 0..60, threads(), &|_, _, _| {});
    assert_clean(
        &summary,
        "n=4, connection-authenticated, random",
        "-n 4 --byzantine random --request-mode connection-authenticated",
    );
}

/// Every replica prunes (`retain_blocks` 10 over an 8-height request
/// lifetime) and one is down for most of the fault phase, so it comes back
/// to peers that no longer hold what it needs and jumps past it (design
/// notes §47). Safety and liveness hold through the jumps, with every fault
/// and a byzantine replica (which may be one of the peers it asks); the
/// runs do jump (27 jumps over the 150 seeds when written), so the path is
/// reached.
#[test]
fn replicas_down_past_retention_jump() {
    let mut pruning = config(4, random_byzantine(1, Behaviour::Random));
    pruning.crowd();
    pruning.protocol.request_lifetime = 8;
    pruning.retain_blocks = Some(10);
    let summary = sweep(&pruning, 0..150, threads(), &|_, _, _| {});
    assert_clean(
        &summary,
        "n=4, crowd, lifetime 8, retain_blocks 10",
        "-n 4 --byzantine random --workload crowd --request-lifetime 8 --retain-blocks 10",
    );
    assert!(summary.jumps > 0, "no run jumped: {summary:#?}");
    // Honest replicas at one height hold the same at-most-once table
    // (checked after every step): a jump that rebuilds it wrong is caught.
    pruning.break_jump_table = true;
    let broken = sweep(&pruning, 0..60, threads(), &|_, _, _| {});
    assert!(
        broken.agreement_violations > 0,
        "a broken jump table went unnoticed in 60 seeds: {broken:#?}"
    );
}
