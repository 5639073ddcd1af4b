//! Micro-benchmarks of the pure hot-path pieces: envelope encode/decode, backoff, job ids and
//! cron next-fire.
//!
//! ```text
//! cargo bench -p psw-tasks-benches --bench micro
//! ```

use psw_tasks::testing::hot_path;

fn main() {
    divan::main();
}

#[divan::bench(args = [16, 1024, 65536])]
fn envelope_encode(bencher: divan::Bencher, payload: usize) {
    let envelope = hot_path::sample_envelope(payload);
    bencher.bench(|| hot_path::encode(divan::black_box(&envelope)));
}

#[divan::bench(args = [16, 1024, 65536])]
fn envelope_decode(bencher: divan::Bencher, payload: usize) {
    let bytes = hot_path::encode(&hot_path::sample_envelope(payload));
    bencher.bench(|| hot_path::decode(divan::black_box(&bytes)));
}

#[divan::bench]
fn backoff_delay(bencher: divan::Bencher) {
    bencher.bench(|| hot_path::backoff(divan::black_box(7), divan::black_box(0.5)));
}

#[divan::bench]
fn job_id_generate() -> psw_tasks::JobId {
    psw_tasks::JobId::generate()
}

#[divan::bench(args = ["*/15 * * * *", "30 2 * * *", "0 8 * * 1-5"])]
fn cron_next_fire(bencher: divan::Bencher, expression: &str) {
    let schedule = psw_tasks::Schedule::cron(expression)
        .unwrap()
        .tz("Europe/Stockholm")
        .unwrap();
    // 2026-03-28 12:00 UTC: the next fires cross the spring-forward night.
    let after = 1_774_699_200_000;
    bencher.bench(|| hot_path::next_fire(divan::black_box(&schedule), divan::black_box(after)));
}
