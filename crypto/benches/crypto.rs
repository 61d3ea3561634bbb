//! Costs of the primitives every message pays: sign, verify, batch verify
//! and hashing.
use bftd_crypto::{verify_batch, Digest, Domain, KeyPair, SignatureCheck};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const BENCH: Domain = Domain::new("bench/v1/message");

fn signing(c: &mut Criterion) {
    let key = KeyPair::from_seed([9; 32]);
    let message = [0x5au8; 128];
    let signature = key.sign(BENCH, &message);
    let validated = key.public().validate().expect("valid key");
    c.bench_function("sign/128B", |b| b.iter(|| key.sign(BENCH, &message)));
    c.bench_function("verify/128B", |b| {
        b.iter(|| validated.verify(BENCH, &message, &signature))
    });
    let mut group = c.benchmark_group("verify_batch");
    for size in [16usize, 64, 256] {
        let checks: Vec<SignatureCheck> = (0..size)
            .map(|i| {
                let key = KeyPair::from_seed([(i % 251) as u8; 32]);
                let message = (i as u64).to_le_bytes();
                let signature = key.sign(BENCH, &message);
                SignatureCheck::new(
                    key.public().validate().expect("valid key"),
                    BENCH,
                    &message,
                    signature,
                )
            })
            .collect();
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &checks, |b, checks| {
            b.iter(|| verify_batch(checks))
        });
    }
    group.finish();
}

fn hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("sha256");
    for size in [512usize, 512 * 1000] {
        let bytes = vec![7u8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &bytes, |b, bytes| {
            b.iter(|| Digest::of(BENCH, bytes))
        });
    }
    group.finish();
}

criterion_group!(benches, signing, hashing);
criterion_main!(benches);
