use bftd_protocol::byzantine::Behaviour;
use bftnet::sim::{run, ByzantineSpec, SimConfig};
use std::time::Instant;

#[test]
fn smoke() {
    let only = std::env::var("B").ok();
    for b in Behaviour::all().into_iter() {
        if only.as_deref().is_some_and(|o| o != b.to_string()) {
            continue;
        }
        let mut fails = 0;
        let mut views = 0;
        let mut h = 0;
        let t = Instant::now();
        for seed in 0..10 {
            let mut config = SimConfig::new(4, seed);
            config.byzantine = ByzantineSpec::Random {
                count: 1,
                behaviour: b.clone(),
            };
            let t1 = Instant::now();
            let report = run(&config);
            if t1.elapsed().as_secs() > 2 {
                println!(
                    "  slow seed {seed}: {:?} msgs={} vt={}",
                    t1.elapsed(),
                    report.messages,
                    report.virtual_ms
                );
            }
            if let Some(v) = &report.violation {
                fails += 1;
                if fails < 3 {
                    println!("  {b} seed {seed}: {v} {:?}", report.byzantine);
                }
            }
            views += report.max_view;
            h += report.height;
        }
        println!(
            "{b}: fails={fails} views={views} height={h} {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn collude() {
    let mut forks = 0;
    let mut first = None;
    for seed in 0..100 {
        let mut config = SimConfig::new(4, seed);
        config.byzantine = ByzantineSpec::Random {
            count: 2,
            behaviour: Behaviour::Collude,
        };
        let report = run(&config);
        if let Some(v) = &report.violation {
            if v.property == "agreement" {
                forks += 1;
                if first.is_none() {
                    first = Some((seed, v.clone()));
                }
            } else {
                println!("seed {seed}: {v}");
            }
        }
    }
    println!("collude forks: {forks}/100 first={first:?}");
}
#[test]
fn n7() {
    for b in [Behaviour::Random, Behaviour::Equivocate] {
        let mut fails = 0;
        let t = Instant::now();
        let mut h = 0;
        for seed in 0..10 {
            let mut config = SimConfig::new(7, seed);
            config.byzantine = ByzantineSpec::Random {
                count: 2,
                behaviour: b.clone(),
            };
            let report = run(&config);
            h += report.height;
            if let Some(v) = &report.violation {
                fails += 1;
                println!("  {b} seed {seed}: {v}");
            }
        }
        println!("n7 {b}: fails={fails} h={h} {:?}", t.elapsed());
    }
}
